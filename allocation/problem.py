"""Problem data and the system models (docs/explanation/system-model.md sections 1 and 4; bound.md section 5).

Everything here is plain arithmetic on arrays: the latency and energy of a round (compute, air,
antenna movement), the closed-form clock that just meets a deadline, and the convergence bound
(``allocation.bound``, re-exported here). ``Problem`` holds the data of one allocation problem
and checks it, raising ``AllocationError`` with the field, the value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Re-exported: older code imports the bound and the error from here.
from allocation.bound import BoundConstants as BoundConstants
from allocation.bound import convergence_bound as convergence_bound
from allocation.bound import selection_bias as selection_bias
from allocation.channel import ChannelModel
from allocation.errors import AllocationError as AllocationError

SELECTIONS = ("pdd", "hybrid", "random", "greedy", "round_robin")
BEAMFORMER_SOLVERS = ("auto", "cvxpy", "numpy")


@dataclass
class Problem:
    """One allocation problem. Arrays indexed by client have length U (the channel's rows)."""

    channel: ChannelModel
    num_antennas: int
    wavelength_m: float
    region_m: float
    min_spacing_m: float
    noise_power_w: float
    power_w: np.ndarray | float
    clients_per_round: int
    weights: np.ndarray | None = None  # phi_k (data sizes); default all ones
    latency_budget_s: float = 600.0
    energy_budget_j: float = 5e4
    max_rounds: int = 30
    local_steps: int = 10
    batch_max: int = 16
    clock_max_hz: np.ndarray | float = 2.0e9
    switched_capacitance: float = 1e-28
    cycles_per_sample: np.ndarray | float = 2.0e10
    bandwidth_hz: float = 1e6
    payload_reals: int = 2_662_400
    air_overhead_s: float = 0.0  # pilots + sync guard per round
    digital_bits_per_real: int = 16  # the error-free digital baseline's quantisation
    stage_speed_m_s: float = 0.05
    initial_positions_m: np.ndarray | None = None
    selection: str = "hybrid"
    fairness_floor: float = 0.2
    bound: BoundConstants = field(default_factory=BoundConstants)
    position_starts: int = 4
    max_outer_iterations: int = 50
    tolerance: float = 1e-3
    beamformer_solver: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    # --- derived sizes -------------------------------------------------------------------------
    @property
    def num_clients(self) -> int:
        return int(self._u)

    @property
    def half_region_m(self) -> float:
        return self.region_m / 2.0

    def per_client(self, value: np.ndarray | float, name: str) -> np.ndarray:
        arr = np.broadcast_to(np.asarray(value, dtype=float), (self.num_clients,)).copy()
        return arr

    @property
    def power(self) -> np.ndarray:
        return self.per_client(self.power_w, "power_w")

    @property
    def phi(self) -> np.ndarray:
        """Aggregation weights normalised to mean 1, so the error scale does not depend on units."""
        w = np.ones(self.num_clients) if self.weights is None else np.asarray(self.weights, dtype=float)
        return w / np.mean(w)

    @property
    def clock_max(self) -> np.ndarray:
        return self.per_client(self.clock_max_hz, "clock_max_hz")

    @property
    def cycles(self) -> np.ndarray:
        return self.per_client(self.cycles_per_sample, "cycles_per_sample")

    @property
    def effective_floor(self) -> float:
        """The participation floor actually enforced: at most K/U, the share everyone could get."""
        return min(self.fairness_floor, self.clients_per_round / self.num_clients)

    @property
    def has_floor(self) -> bool:
        """Whether the participation floor binds every method (selection "hybrid", floor > 0)."""
        return self.selection == "hybrid" and self.effective_floor > 0

    def effective_channels(self, positions_m: np.ndarray) -> np.ndarray:
        """h~_k = sqrt(P_k) / phi_k h_k at ``positions_m`` (U x N), checked for NaN."""
        h = np.asarray(self.channel.response(positions_m))
        if not np.all(np.isfinite(h)):
            raise AllocationError("channel.response returned NaN/inf entries: check the channel estimates")
        return h * (np.sqrt(self.power) / self.phi)[:, None]

    def effective_gradient(self, positions_m: np.ndarray) -> np.ndarray:
        g = np.asarray(self.channel.gradient(positions_m))
        if not np.all(np.isfinite(g)):
            raise AllocationError("channel.gradient returned NaN/inf entries")
        return g * (np.sqrt(self.power) / self.phi)[:, None, None]

    # --- checks --------------------------------------------------------------------------------
    def validate(self) -> None:
        def positive(name: str, value: float | np.ndarray) -> None:
            arr = np.asarray(value, dtype=float)
            if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                raise AllocationError(f"{name} must be finite and > 0 (got {value!r})")

        for name in (
            "wavelength_m",
            "region_m",
            "noise_power_w",
            "power_w",
            "latency_budget_s",
            "energy_budget_j",
            "clock_max_hz",
            "switched_capacitance",
            "cycles_per_sample",
            "bandwidth_hz",
            "stage_speed_m_s",
            "tolerance",
        ):
            positive(name, getattr(self, name))
        for name in (
            "num_antennas",
            "clients_per_round",
            "max_rounds",
            "local_steps",
            "batch_max",
            "payload_reals",
            "position_starts",
            "max_outer_iterations",
        ):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise AllocationError(f"{name} must be an integer >= 1 (got {value!r})")
        if not (np.isfinite(self.min_spacing_m) and self.min_spacing_m >= 0):
            raise AllocationError(f"min_spacing_m must be finite and >= 0 (got {self.min_spacing_m!r})")
        if self.selection not in SELECTIONS:
            raise AllocationError(f"selection must be one of {SELECTIONS} (got {self.selection!r})")
        if self.beamformer_solver not in BEAMFORMER_SOLVERS:
            raise AllocationError(
                f"beamformer_solver must be one of {BEAMFORMER_SOLVERS} (got {self.beamformer_solver!r})"
            )
        if not 0.0 <= self.fairness_floor <= 1.0:
            raise AllocationError(f"fairness_floor must be in [0, 1] (got {self.fairness_floor!r})")
        if not isinstance(self.channel, ChannelModel):
            raise AllocationError(
                "channel must answer response(positions) -> K x N and gradient(positions) -> K x N x 2"
            )
        # N antennas at spacing D must fit: a disc packing bound, (A + D)^2 >= N * (sqrt(3)/2) D^2.
        n, d, a = self.num_antennas, self.min_spacing_m, self.region_m
        crowded = d > a * math.sqrt(2.0) or n * (math.sqrt(3.0) / 2.0) * d * d > (a + d) ** 2
        if n > 1 and d > 0 and crowded:
            raise AllocationError(
                f"{n} antennas at min spacing {d:.4g} m do not fit a {a:.4g} m square region: "
                f"lower num_antennas or min_spacing, or enlarge the region"
            )
        probe = np.zeros((n, 2)) if self.initial_positions_m is None else self.initial_positions_m
        h = np.asarray(self.channel.response(np.asarray(probe, dtype=float)))
        if h.ndim != 2 or h.shape[1] != n:
            raise AllocationError(f"channel.response must give U x N = ? x {n} (got shape {h.shape})")
        if not np.all(np.isfinite(h)):
            raise AllocationError("channel.response has NaN/inf entries: the channel data are corrupt")
        self._u = h.shape[0]
        if self.clients_per_round > self._u:
            raise AllocationError(
                f"clients_per_round={self.clients_per_round} exceeds the number of clients ({self._u})"
            )
        for name in ("power_w", "clock_max_hz", "cycles_per_sample", "weights"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value, dtype=float)
            if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != self._u):
                raise AllocationError(f"{name} must be a scalar or have one entry per client ({self._u})")
            positive(name, arr)
        if self.initial_positions_m is not None:
            pos = np.asarray(self.initial_positions_m, dtype=float)
            if pos.shape != (n, 2):
                raise AllocationError(f"initial_positions_m must be {n} x 2 (got {pos.shape})")
        air = airtime_s(self.payload_reals, self.bandwidth_hz, self.air_overhead_s)
        one_sample = float(np.max(self.local_steps * self.cycles / self.clock_max))
        if air + one_sample > self.latency_budget_s:
            raise AllocationError(
                f"latency_budget_s={self.latency_budget_s:g} cannot fit even one round of batch 1 at "
                f"max clock ({one_sample:.4g} s compute + {air:.4g} s air): raise the budget"
            )
        e_min = self.clients_per_round * float(
            np.min(
                compute_energy_j(
                    self.switched_capacitance,
                    self.local_steps,
                    self.cycles,
                    1,
                    self.local_steps * self.cycles / (self.latency_budget_s - air),
                )
            )
        )
        if e_min > self.energy_budget_j:
            raise AllocationError(
                f"energy_budget_j={self.energy_budget_j:g} cannot pay for even one round of batch 1 "
                f"(needs at least {e_min:.4g} J): raise the budget"
            )


# --- latency and energy (docs/explanation/system-model.md section 4) -----------------------------------------------------
def compute_time_s(
    local_steps: int, cycles: np.ndarray, batch: np.ndarray, clock_hz: np.ndarray
) -> np.ndarray:
    """T_k = tau c_k b_k / f_k."""
    return local_steps * np.asarray(cycles) * np.asarray(batch) / np.asarray(clock_hz)


def compute_energy_j(
    kappa: float, local_steps: int, cycles: np.ndarray, batch: np.ndarray, clock_hz: np.ndarray
) -> np.ndarray:
    """E_k = kappa tau c_k b_k f_k^2."""
    return kappa * local_steps * np.asarray(cycles) * np.asarray(batch) * np.asarray(clock_hz) ** 2


def deadline_clock_hz(
    local_steps: int, cycles: np.ndarray, batch: np.ndarray, deadline_s: float
) -> np.ndarray:
    """The energy-optimal clock at an active deadline: f_k = tau c_k b_k / T (energy grows as f^2)."""
    return local_steps * np.asarray(cycles) * np.asarray(batch) / deadline_s


def airtime_s(payload_reals: int, bandwidth_hz: float, overhead_s: float = 0.0) -> float:
    """T_air = ceil(q/2) / B + overhead: two reals per complex symbol, everyone at once."""
    return math.ceil(payload_reals / 2) / bandwidth_hz + overhead_s


def air_energy_j(payload_reals: int, bandwidth_hz: float, tx_power_w: np.ndarray) -> np.ndarray:
    """E_k^air = ceil(q/2) / B |b_k|^2."""
    return math.ceil(payload_reals / 2) / bandwidth_hz * np.asarray(tx_power_w)


def round_energy_j(
    problem: Problem, selected: np.ndarray, batches: np.ndarray, clocks_hz: np.ndarray, air_j: np.ndarray
) -> float:
    """One round's energy: compute at each client's batch and clock, plus its transmit energy.

    The one cost model a round is planned with (``to_round_plan``) and charged with (a run's
    accountant, on what the round really ran): a budget spent by one and checked by the other
    must be priced alike.
    """
    cyc = problem.cycles[np.asarray(selected, dtype=int)]
    comp = compute_energy_j(problem.switched_capacitance, problem.local_steps, cyc, batches, clocks_hz)
    return float(np.sum(comp)) + float(np.sum(air_j))


def movement_time_s(previous_m: np.ndarray | None, new_m: np.ndarray, speed_m_s: float) -> float:
    """T_mov = max_n ||r_n(t) - r_n(t-1)|| / v_stage (all stages move at once)."""
    if previous_m is None:
        return 0.0
    return float(np.max(np.linalg.norm(np.asarray(new_m) - np.asarray(previous_m), axis=1)) / speed_m_s)


def round_latency_s(compute_s: np.ndarray, air_s: float, move_s: float) -> float:
    """T(t) = max_k T_k + T_air + T_mov: the slowest selected client sets the pace."""
    return float(np.max(compute_s)) + air_s + move_s


def lambda_half_grid(
    num_antennas: int, wavelength_m: float, region_m: float, min_spacing_m: float = 0.0
) -> np.ndarray:
    """The fixed array: a centred square-ish grid at lambda/2 spacing (N = 4 gives a 2 x 2 grid).

    The pitch grows to D when the minimum spacing is larger than lambda/2.
    """
    cols = int(math.ceil(math.sqrt(num_antennas)))
    rows = int(math.ceil(num_antennas / cols))
    step = max(wavelength_m / 2.0, min_spacing_m)
    xs = (np.arange(cols) - (cols - 1) / 2.0) * step
    ys = (np.arange(rows) - (rows - 1) / 2.0) * step
    grid = np.array([(x, y) for y in ys for x in xs])[:num_antennas]
    if np.max(np.abs(grid)) > region_m / 2.0 + 1e-12:
        raise AllocationError(
            f"a lambda/2 grid of {num_antennas} antennas does not fit a {region_m:.4g} m region"
        )
    return grid
