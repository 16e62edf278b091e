"""The checks `testbed run` makes before it opens a device or writes a run directory.

``check_run_config`` is the one validation behind both ``testbed check`` and ``testbed run``
(and ``build_lab``), so a config that ``check`` passes is not refused later by ``run`` for a
reason that needs no device, and a refused run leaves nothing on disk. Each failure is a
``ConfigError`` naming the field, the value and what is allowed, and every failure is reported
at once (``config_errors``), not one per try.

- the radios: one air cannot mix simulated and real radios; the symbol-level air is sim only;
  real radios need a measured channel map (``allocation.channel_map``);
- the stages: each stage's travel must cover the whole region, since the planner may put any
  antenna anywhere in it;
- the FL files: the coordinator loads the model and the data set on this host (for evaluation),
  so a pretrained model's local path and the data file must be there;
- the allocation problem: built as the run builds it (the channel map is read, the budgets and
  sizes are checked), without solving it.
"""

from __future__ import annotations

from pathlib import Path

from drivers.errors import ConfigError
from testbed.config import TestbedConfig


def check_radios(config: TestbedConfig) -> bool:
    """Check the radio backends and the channel source; return True when every radio is sim."""
    lab = config.lab
    backends = {lab.receiver.backend, lab.clients.radio.backend}
    if len(backends) > 1:
        raise ConfigError(
            "lab.receiver.backend and lab.clients.radio.backend: one air cannot mix simulated and real "
            f"radios (got receiver {lab.receiver.backend!r}, clients {lab.clients.radio.backend!r})"
        )
    simulated = backends == {"sim"}
    if not simulated and config.fl.airlink == "symbol":
        raise ConfigError("fl.airlink: 'symbol' is the simulated air; with USRP radios use 'radio'")
    if not simulated and not config.allocation.channel_map:
        raise ConfigError(
            "allocation.channel_map: required with real radios (got ''); measure the region first "
            "with `testbed measure` and give its run directory"
        )
    return simulated


def check_stage_reach(config: TestbedConfig) -> None:
    """Every stage's travel (origin_m .. origin_m + travel_m) covers the square region."""
    half = config.lab.array.region_m / 2.0
    for name, stage in config.lab.stages.items():
        (ox, oy), t = stage.origin_m, stage.travel_m
        if ox > -half + 1e-9 or oy > -half + 1e-9 or ox + t < half - 1e-9 or oy + t < half - 1e-9:
            raise ConfigError(
                f"lab.stages.{name}: its travel x {ox:.4g}..{ox + t:.4g} m, y {oy:.4g}..{oy + t:.4g} m "
                f"(origin_m + travel_m) does not cover the region -{half:.4g}..{half:.4g} m "
                "(lab.array.region_wavelengths), where the planner may put any antenna; "
                "move origin_m or enlarge travel_m"
            )


def check_model_path(config: TestbedConfig) -> None:
    """The model folder the coordinator loads at start exists on this host."""
    model = config.fl.model
    if model.source == "pretrained":
        if not model.path:
            raise ConfigError(
                "fl.model.path: source 'pretrained' needs a local path or cached hub id (got '')"
            )
        # A hub id ('org/name') may sit in the cache; a filesystem path must exist.
        looks_local = model.path.startswith(("/", ".", "~")) or Path(model.path).expanduser().exists()
        if looks_local and not Path(model.path).expanduser().is_dir():
            raise ConfigError(f"fl.model.path: {model.path}: no such model folder on this host")


def check_data_path(config: TestbedConfig) -> None:
    """The data file the coordinator loads at start exists on this host."""
    data = config.fl.data
    if data.source != "generated":
        if not data.path:
            raise ConfigError(
                f"fl.data.path: source {data.source!r} needs a local JSON/JSONL file path (got '')"
            )
        if not Path(data.path).expanduser().is_file():
            raise ConfigError(f"fl.data.path: {data.path}: no such file")


def check_fl_files(config: TestbedConfig) -> None:
    """The model folder and the data file the coordinator loads at start exist on this host."""
    check_model_path(config)
    check_data_path(config)


PARTS = ("stages", "radios", "fl")


def config_errors(config: TestbedConfig, parts: tuple[str, ...] = PARTS) -> list[str]:
    """Every device-free error of ``config`` at once (each a ``ConfigError`` message), for the
    ``parts`` asked (``stages``, ``radios``, ``fl``); with all three, also the run's cost and
    allocation problem, where what they read (the channel map, the model, the data) passed."""
    from fl.cost import check_rounds, costed_config, workload_cost
    from testbed.planning import build_problem

    errors: list[str] = []

    def attempt(check: object) -> bool:
        try:
            check()  # type: ignore[operator]
        except ConfigError as exc:
            errors.append(str(exc))
            return False
        return True

    radios_ok = attempt(lambda: check_radios(config)) if "radios" in parts else True
    if "stages" in parts:
        attempt(lambda: check_stage_reach(config))
    files_ok = True
    if "fl" in parts:
        files_ok = attempt(lambda: check_model_path(config)) & attempt(lambda: check_data_path(config))
    if set(parts) >= set(PARTS) and radios_ok and files_ok:
        # The budgets priced at the workload that trains (fl.cost), as the run's planner sees them;
        # they read the model, the data and the channel map, so only once those passed.
        def plan() -> None:
            cost = workload_cost(config)
            check_rounds(config, cost)
            build_problem(costed_config(config, cost))  # reads allocation.channel_map; budgets, sizes

        attempt(plan)
    return errors


def check_run_config(config: TestbedConfig, parts: tuple[str, ...] = PARTS) -> None:
    """Everything ``testbed run`` would refuse without a device; one ``ConfigError`` naming every
    error found (one error: its own message)."""
    errors = config_errors(config, parts)
    if len(errors) == 1:
        raise ConfigError(errors[0])
    if errors:
        raise ConfigError(f"{len(errors)} config errors:\n" + "\n".join(f"- {e}" for e in errors))


__all__ = [
    "PARTS",
    "check_fl_files",
    "check_radios",
    "check_run_config",
    "check_stage_reach",
    "config_errors",
]
