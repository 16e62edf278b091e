"""The ``lab`` section: the XY stages and the antenna region, the radios, the clients and the
simulated medium, and the check that the stages' homed corners and travel keep the antennas apart.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from testbed.config.base import (
    SPEED_OF_LIGHT_M_S,
    FiniteFloat,
    NonNegFloat,
    PositiveFloat,
    Section,
)


# --- stages and the region ----------------------------------------------------------------------
class StageSection(Section):
    """One XY stage carrying one receive antenna."""

    backend: Literal["sim", "grbl", "zaber"] = Field(
        "sim", description="sim: a GRBL emulator in process; grbl or zaber: the controller on `port`"
    )
    port: str = Field("", description="pyserial URL: /dev/ttyUSB0, socket://host:port, or '' for sim")
    travel_m: PositiveFloat = Field(0.5, le=5.0, description="usable travel along X and Y")
    origin_m: tuple[FiniteFloat, FiniteFloat] = Field(
        (-0.25, -0.25), description="region coordinates of the stage's homed corner"
    )
    max_speed_m_s: PositiveFloat = Field(0.05, le=2.0)
    accel_m_s2: PositiveFloat = Field(0.5, le=50.0)
    home_on_start: bool = True
    homing_timeout_s: PositiveFloat = Field(120.0, description="the longest a homing cycle may take")
    command_timeout_s: PositiveFloat = Field(
        2.0, description="the longest wait for the controller's reply to one command"
    )
    settle_s: NonNegFloat = 0.05
    zaber_address: int = Field(1, ge=1, le=99, description="zaber: the device's address on its daisy chain")
    sim_time_scale: PositiveFloat = Field(
        20.0, description="sim only: the emulator's clock runs this many times faster than real time"
    )


class ArraySection(Section):
    """The movable-antenna region at the receiver (docs/explanation/system-model.md section 1)."""

    carrier_hz: PositiveFloat = 2.4e9
    region_wavelengths: PositiveFloat = Field(4.0, description="side A of the square region, in lambda")
    min_spacing_wavelengths: NonNegFloat = Field(0.5, description="D, the minimum antenna spacing")
    allow_overlapping_travel: bool = Field(
        False,
        description="the stages' travel squares may come closer than D (the antennas share the region); "
        "then only the move gate keeps them D apart, and the mounts must be able to pass each other",
    )

    @property
    def wavelength_m(self) -> float:
        return SPEED_OF_LIGHT_M_S / self.carrier_hz

    @property
    def region_m(self) -> float:
        return self.region_wavelengths * self.wavelength_m

    @property
    def min_spacing_m(self) -> float:
        return self.min_spacing_wavelengths * self.wavelength_m


# --- radios and clients -------------------------------------------------------------------------
class RadioSection(Section):
    backend: Literal["sim", "usrp"] = Field(
        "sim",
        description="sim: a simulated radio on the simulated medium; usrp: a USRP behind a radio server",
    )
    args: str = Field("", description="UHD device args, e.g. 'type=b200,serial=31A7F0B'")
    server: str = Field("", description="ZeroMQ address of the radio server; '' runs it in-process (sim)")
    frequency_hz: PositiveFloat = Field(2.4e9, description="carrier frequency")
    rate_sps: PositiveFloat = Field(1e6, le=200e6, description="sample rate")
    tx_gain_db: FiniteFloat = Field(50.0, ge=0, le=100, description="TX gain, at most max_tx_gain_db")
    rx_gain_db: FiniteFloat = Field(30.0, ge=0, le=100, description="RX gain")
    max_tx_gain_db: FiniteFloat = Field(70.0, ge=0, le=100, description="TX gain cap, enforced in the driver")
    clock_source: Literal["internal", "external", "gpsdo"] = Field(
        "internal",
        description="10 MHz reference; external: the lab's, shared by every radio for the timed OTA burst",
    )
    time_source: Literal["internal", "external", "gpsdo"] = Field(
        "internal", description="PPS source; external: the lab's, shared by every radio"
    )
    tx_antenna: str = Field("TX/RX", description="the USRP port that transmits")
    rx_antenna: str = Field("RX2", description="the USRP port that receives")
    client_key: str = Field(
        "", description="CURVE: this caller's NAME.key_secret; '' = plain text (loopback only)"
    )
    server_key: str = Field("", description="CURVE: the radio server's public NAME.key")
    rpc_timeout_s: PositiveFloat = Field(
        5.0, description="a radio-server call fails with RadioError after this, beyond the op's own wait"
    )

    @model_validator(mode="after")
    def _args_and_gain(self) -> RadioSection:
        from drivers.radio import parse_device_args

        try:
            parse_device_args(self.args)  # UHD's device_addr rules, so `testbed check` catches it
        except ValueError as exc:
            raise ValueError(
                f"args={self.args!r}: {exc}; UHD device args are key=value pairs separated by commas, "
                "e.g. 'type=b200,serial=31A7F0B'"
            ) from None
        if self.tx_gain_db > self.max_tx_gain_db:
            raise ValueError(f"tx_gain_db={self.tx_gain_db} exceeds max_tx_gain_db={self.max_tx_gain_db}")
        return self


class ClientsSection(Section):
    """The U single-antenna clients (FL nodes with their radios)."""

    count: int = Field(4, ge=1, le=256, description="U, the number of clients (FL nodes)")
    tx_power_w: PositiveFloat = Field(0.1, le=10.0, description="P_k, the per-client power budget")
    distance_m: tuple[PositiveFloat, PositiveFloat] = Field(
        (20.0, 80.0), description="sim: clients' distances to the receiver are drawn in this range"
    )
    radio: RadioSection = RadioSection()
    radio_servers: list[str] = Field(
        default_factory=list, description="usrp: one radio-server address per client"
    )

    @model_validator(mode="after")
    def _check(self) -> ClientsSection:
        lo, hi = self.distance_m
        if lo > hi:
            raise ValueError(f"distance_m must be (min, max) with min <= max (got {self.distance_m})")
        if self.radio_servers and len(self.radio_servers) != self.count:
            raise ValueError(
                f"radio_servers lists {len(self.radio_servers)} addresses for {self.count} clients"
            )
        return self


# --- the simulated medium -----------------------------------------------------------------------
class ImpairmentsSection(Section):
    """Hardware effects of the simulated medium; each can be switched off."""

    awgn: bool = Field(True, description="add the receiver's noise")
    cfo_hz_max: NonNegFloat = Field(
        200.0, description="each radio's residual carrier frequency offset is drawn up to this"
    )
    phase_drift_rad_s: NonNegFloat = Field(0.5, description="the LO phase's drift rate")
    timing_offset_samples_max: NonNegFloat = Field(
        0.3, description="each burst's residual timing offset is drawn up to this (fractional samples)"
    )
    random_lo_phase: bool = Field(
        True, description="a fresh random LO phase at every retune, as real radios have"
    )
    dac_clipping: bool = Field(True, description="clip samples above dac_full_scale, as a DAC does")
    dac_full_scale: PositiveFloat = Field(1.0, description="the DAC's full-scale amplitude")


class MediumSection(Section):
    """The simulated air: field-response channels (docs/explanation/system-model.md section 2) plus impairments."""

    paths: int = Field(10, ge=1, le=64, description="L, paths per client")
    rician_k: NonNegFloat = Field(
        0.0, description="kappa, the Rician factor of each client's first path (0: Rayleigh)"
    )
    path_loss_exponent: PositiveFloat = Field(
        2.8, le=6.0, description="sets each client's large-scale path loss beta_k from its distance"
    )
    ref_loss_db: FiniteFloat = Field(40.0, description="path loss at 1 m")
    noise_power_dbm: FiniteFloat = Field(-90.0, le=0, description="sigma^2, the receiver's noise power")
    tx_gain_ref_db: FiniteFloat = Field(
        60.0, description="sim calibration: the TX gain at which a unit-modulus sample radiates 1 W"
    )
    rx_gain_ref_db: FiniteFloat = Field(
        0.0, description="sim calibration: the RX gain at which a capture reads the antenna's sqrt(W)"
    )
    capture_history_s: NonNegFloat = Field(
        0.0, description="sim: how far back a second radio may still capture a window already past"
    )
    impairments: ImpairmentsSection = ImpairmentsSection()


# --- the lab ------------------------------------------------------------------------------------
def default_stages() -> dict[str, StageSection]:
    """Four sim stages, parked just outside the 0.5 m region 70 mm apart, each covering all of it."""
    return {f"ma{i}": StageSection(travel_m=0.8, origin_m=(-0.25 - 0.07 * i, -0.30)) for i in range(4)}


def _travel_box(section: StageSection) -> tuple[tuple[float, float], tuple[float, float]]:
    """The region square a stage's antenna can reach: ((x_lo, x_hi), (y_lo, y_hi))."""
    (ox, oy), t = section.origin_m, section.travel_m
    return (ox, ox + t), (oy, oy + t)


def _box_gap_m(a: StageSection, b: StageSection) -> float:
    """The distance between two stages' travel squares (0 where they overlap)."""
    pairs = zip(_travel_box(a), _travel_box(b), strict=True)
    gaps = [max(0.0, lo_b - hi_a, lo_a - hi_b) for (lo_a, hi_a), (lo_b, hi_b) in pairs]
    return math.hypot(*gaps)


class LabSection(Section):
    stages: dict[str, StageSection] = Field(
        default_factory=default_stages,
        description="one XY stage per receive antenna, by name; N = number of stages",
    )
    array: ArraySection = ArraySection()
    receiver: RadioSection = RadioSection(rx_gain_db=30.0)
    clients: ClientsSection = ClientsSection()
    medium: MediumSection = MediumSection()

    @model_validator(mode="before")
    @classmethod
    def _defaults_share_the_region(cls, data: Any) -> Any:
        # The built-in stages (no `stages` given) each cover the whole region by design.
        if isinstance(data, dict) and "stages" not in data:
            array = data.get("array")
            if array is None or (isinstance(array, dict) and "allow_overlapping_travel" not in array):
                data = {**data, "array": {**(array or {}), "allow_overlapping_travel": True}}
        return data

    @model_validator(mode="after")
    def _check(self) -> LabSection:
        if not self.stages:
            raise ValueError("at least one stage (receive antenna) is needed")
        check_stage_layout(self.stages, self.array)
        return self

    @property
    def num_antennas(self) -> int:
        return len(self.stages)


def check_stage_layout(stages: dict[str, StageSection], array: ArraySection) -> None:
    """Homed corners at least D apart always; travel squares D apart unless overlap is allowed.

    Homing drives every antenna to its origin at once with no path check, so two origins closer
    than D collide on every start. Overlapping travel lets two antennas reach the same spot.
    """
    d_m = array.min_spacing_m
    names = list(stages)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sa, sb = stages[a], stages[b]
            apart = math.dist(sa.origin_m, sb.origin_m)
            if apart < d_m - 1e-9:
                raise ValueError(
                    f"lab.stages.{a}.origin_m={list(sa.origin_m)} and lab.stages.{b}.origin_m="
                    f"{list(sb.origin_m)} are {apart * 1e3:.1f} mm apart, under the minimum spacing "
                    f"{d_m * 1e3:.1f} mm (lab.array.min_spacing_wavelengths): homing would collide; "
                    "give each stage its own homed corner"
                )
            if array.allow_overlapping_travel:
                continue
            if _box_gap_m(sa, sb) < d_m - 1e-9:
                (ax, ay), (bx, by) = _travel_box(sa), _travel_box(sb)
                ox = (max(ax[0], bx[0]), min(ax[1], bx[1]))
                oy = (max(ay[0], by[0]), min(ay[1], by[1]))
                where = (
                    f"they overlap over x {ox[0]:.3f}..{ox[1]:.3f} m, y {oy[0]:.3f}..{oy[1]:.3f} m"
                    if ox[0] < ox[1] and oy[0] < oy[1]
                    else f"they come {_box_gap_m(sa, sb) * 1e3:.1f} mm close"
                )
                raise ValueError(
                    f"lab.stages.{a} and lab.stages.{b}: their travel (origin_m + travel_m: x "
                    f"{ax[0]:.3f}..{ax[1]:.3f}, y {ay[0]:.3f}..{ay[1]:.3f} m and x {bx[0]:.3f}..{bx[1]:.3f}, "
                    f"y {by[0]:.3f}..{by[1]:.3f} m) is not {d_m * 1e3:.1f} mm apart: {where}; set "
                    "lab.array.allow_overlapping_travel: true if the antennas are meant to share that area"
                )
