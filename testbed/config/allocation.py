"""The ``allocation`` section: selection, budgets, the cost model, the position search and the
convergence bound's constants (``allocation.bound``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from testbed.config.base import NonNegFloat, PositiveFloat, Probability, Section


class BoundSection(Section):
    """Constants of the convergence bound (docs/explanation/bound.md section 5; ``allocation.bound``).

    The plan records each one as "config" when set here, else "default"; a run replaces G^2 and
    zeta^2 with estimates from the nodes' update norms as it goes.
    """

    smoothness: PositiveFloat = Field(1.0, description="L")
    sgd_step: PositiveFloat | None = Field(
        None, description="eta_eff, the SGD-equivalent step (eta_eff * L <= 1); unset: 1/L. Never Adam's lr"
    )
    initial_gap: PositiveFloat = Field(1.0, description="Delta0 = F(w_0) - F*, in loss units")
    gradient_variance: PositiveFloat = Field(1.0, description="sigma_g^2 per sample")
    update_sq_norm: NonNegFloat = Field(0.1, description="G^2, mean squared norm of the aggregated update")
    heterogeneity: NonNegFloat = Field(0.05, description="zeta^2, scales the selection bias (~0 for IID)")
    pretrain_rounds: int = Field(100, ge=0, description="M, only in the distribution-shift term")
    wasserstein: NonNegFloat = Field(
        0.1,
        description="W, the Wasserstein-1 distance between pre-training and fine-tuning data (shift term)",
    )
    lipschitz_data: NonNegFloat = Field(1.0, description="L_xi, in the shift term")
    c1: NonNegFloat = Field(1.0, description="c_1, in the shift term")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # Old keys get a message saying what replaced them (not just "unknown key").
        renamed = {
            "learning_rate": "was renamed: use sgd_step (the SGD-equivalent step, sgd_step * smoothness "
            "<= 1, or leave it unset for 1/smoothness); Adam's learning rate does not belong here",
            "pretrain_batch": "was removed: the pre-training rounds only enter the shift term (pretrain_rounds)",
        }
        if isinstance(data, dict):
            for key, what in renamed.items():
                if key in data:
                    raise ValueError(f"bound.{key} {what} (got {key}={data[key]!r})")
        return data

    @model_validator(mode="after")
    def _step_fits(self) -> BoundSection:
        if self.sgd_step is not None and self.sgd_step * self.smoothness > 1.0 + 1e-9:
            raise ValueError(
                f"sgd_step={self.sgd_step:g} breaks sgd_step * smoothness <= 1 (smoothness "
                f"{self.smoothness:g}): use at most {1.0 / self.smoothness:g}, or leave it unset for 1/L"
            )
        return self


class AllocationSection(Section):
    clients_per_round: int = Field(2, ge=1, description="K, clients sending at once per round")
    selection: Literal["pdd", "hybrid", "random", "greedy", "round_robin"] = Field(
        "hybrid",
        description="how clients are picked: pdd (the optimizer), hybrid (pdd with the fairness floor), random, greedy (best channels), round_robin",
    )
    fairness_floor: Probability = Field(0.2, description="hybrid: each client's minimum participation share")
    latency_budget_s: PositiveFloat = 600.0
    energy_budget_j: PositiveFloat = Field(5e4, description="E_max, the whole run's energy budget")
    max_rounds: int = Field(
        30, ge=1, description="the most rounds the planner designs (R is searched up to this)"
    )
    local_steps: int = Field(10, ge=1, description="tau")
    batch_max: int = Field(16, ge=1)
    clock_max_hz: PositiveFloat = Field(2.0e9, description="f_max, the clients' top clock")
    switched_capacitance: PositiveFloat = Field(1e-28, description="kappa in E = kappa c b f^2")
    cycles_per_sample: PositiveFloat = 2.0e10
    bandwidth_hz: PositiveFloat = Field(1e6, description="B, the OTA bandwidth: airtime = ceil(q/2) / B")
    payload_reals: int = Field(2_662_400, ge=1, description="q, LoRA parameters sent per round")
    air_overhead_s: NonNegFloat = Field(0.0, description="pilots + sync guard added to each round's airtime")
    bound: BoundSection = BoundSection()
    position_starts: int = Field(
        4,
        ge=1,
        le=64,
        description="starts of the antenna-position search each round (the lambda/2 grid first)",
    )
    max_outer_iterations: int = Field(50, ge=1, description="PDD's outer iterations, at most")
    tolerance: PositiveFloat = Field(
        1e-3, description="PDD stops when the constraint violation ||h||_inf falls below this"
    )
    beamformer_solver: Literal["auto", "cvxpy", "numpy"] = Field(
        "auto", description="the beamformer step: numpy (its dual), cvxpy (the SOCP); auto: numpy"
    )
    channel_map: str = Field(
        "",
        description="a campaign's run directory (or its table): plan positions on this measured map "
        "instead of the simulated world; required with real radios",
    )
    sweep_engine: Literal["local", "ray", "dask"] = Field(
        "local", description="where `testbed plan --sweep` solves its points: local processes, Ray or Dask"
    )
    sweep_workers: int = Field(2, ge=1, description="a sweep's parallel workers")
