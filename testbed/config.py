"""One typed configuration tree for the whole testbed (pydantic v2), loaded from YAML.

Every error names the file, the dotted field path, the bad value and what is allowed, e.g.
``configs/lab.yaml: lab.stages.ma0.travel_m: must be > 0 (got -0.2)``. Unknown keys are errors.
Overrides come as ``a.b.c=value`` strings (``--set`` on the command line); the value is parsed
as YAML, so ``--set fl.rounds=3`` gives an int and ``--set lab.stages.ma0.backend=grbl`` a string.

Units are SI and named by suffix (``_m``, ``_hz``, ``_s``, ``_w``, ``_db``, ``_dbm``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.errors import ConfigError

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
SPEED_OF_LIGHT_M_S = 299_792_458.0


class Section(BaseModel):
    """Base of every section: unknown keys are errors; assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --- run ----------------------------------------------------------------------------------------
class RunSection(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    seed: int = Field(0, ge=0)
    output_dir: Path = Path("runs")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="the run.log file's level"
    )


# --- lab: stages --------------------------------------------------------------------------------
class StageSection(Section):
    """One XY stage carrying one receive antenna."""

    backend: Literal["sim", "grbl", "zaber"] = "sim"
    port: str = Field("", description="pyserial URL: /dev/ttyUSB0, socket://host:port, or '' for sim")
    travel_m: PositiveFloat = Field(0.5, le=5.0, description="usable travel along X and Y")
    origin_m: tuple[FiniteFloat, FiniteFloat] = Field(
        (-0.25, -0.25), description="region coordinates of the stage's homed corner"
    )
    max_speed_m_s: PositiveFloat = Field(0.05, le=2.0)
    accel_m_s2: PositiveFloat = Field(0.5, le=50.0)
    home_on_start: bool = True
    homing_timeout_s: PositiveFloat = 120.0
    command_timeout_s: PositiveFloat = 2.0
    settle_s: NonNegFloat = 0.05
    zaber_address: int = Field(1, ge=1, le=99)
    sim_time_scale: PositiveFloat = Field(
        20.0, description="sim only: the emulator's clock runs this many times faster than real time"
    )


class ArraySection(Section):
    """The movable-antenna region at the receiver (MODEL.md section 1)."""

    carrier_hz: PositiveFloat = 2.4e9
    region_wavelengths: PositiveFloat = Field(4.0, description="side A of the square region, in lambda")
    min_spacing_wavelengths: NonNegFloat = Field(0.5, description="D, the minimum antenna spacing")

    @property
    def wavelength_m(self) -> float:
        return SPEED_OF_LIGHT_M_S / self.carrier_hz

    @property
    def region_m(self) -> float:
        return self.region_wavelengths * self.wavelength_m

    @property
    def min_spacing_m(self) -> float:
        return self.min_spacing_wavelengths * self.wavelength_m


# --- lab: radios --------------------------------------------------------------------------------
class RadioSection(Section):
    backend: Literal["sim", "usrp"] = "sim"
    args: str = Field("", description="UHD device args, e.g. 'type=b200,serial=31A7F0B'")
    server: str = Field("", description="ZeroMQ address of the radio server; '' runs it in-process (sim)")
    frequency_hz: PositiveFloat = 2.4e9
    rate_sps: PositiveFloat = Field(1e6, le=200e6)
    tx_gain_db: FiniteFloat = Field(50.0, ge=0, le=100)
    rx_gain_db: FiniteFloat = Field(30.0, ge=0, le=100)
    max_tx_gain_db: FiniteFloat = Field(70.0, ge=0, le=100, description="TX gain cap, enforced in the driver")
    clock_source: Literal["internal", "external", "gpsdo"] = "internal"
    time_source: Literal["internal", "external", "gpsdo"] = "internal"
    tx_antenna: str = "TX/RX"
    rx_antenna: str = "RX2"
    client_key: str = Field(
        "", description="CURVE: this caller's NAME.key_secret; '' = plain text (loopback only)"
    )
    server_key: str = Field("", description="CURVE: the radio server's public NAME.key")
    rpc_timeout_s: PositiveFloat = Field(
        5.0, description="a radio-server call fails with RadioError after this, beyond the op's own wait"
    )

    @model_validator(mode="after")
    def _gain_under_cap(self) -> RadioSection:
        if self.tx_gain_db > self.max_tx_gain_db:
            raise ValueError(f"tx_gain_db={self.tx_gain_db} exceeds max_tx_gain_db={self.max_tx_gain_db}")
        return self


class ClientsSection(Section):
    """The U single-antenna clients (FL nodes with their radios)."""

    count: int = Field(4, ge=1, le=256)
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


class ImpairmentsSection(Section):
    """Hardware effects of the simulated medium; each can be switched off."""

    awgn: bool = True
    cfo_hz_max: NonNegFloat = 200.0
    phase_drift_rad_s: NonNegFloat = 0.5
    timing_offset_samples_max: NonNegFloat = 0.3
    random_lo_phase: bool = True
    dac_clipping: bool = True
    dac_full_scale: PositiveFloat = 1.0


class MediumSection(Section):
    """The simulated air: field-response channels (MODEL.md section 2) plus impairments."""

    paths: int = Field(10, ge=1, le=64, description="L, paths per client")
    rician_k: NonNegFloat = 0.0
    path_loss_exponent: PositiveFloat = Field(2.8, le=6.0)
    ref_loss_db: FiniteFloat = Field(40.0, description="path loss at 1 m")
    noise_power_dbm: FiniteFloat = Field(-90.0, le=0)
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


class LabSection(Section):
    stages: dict[str, StageSection] = Field(
        default_factory=lambda: {f"ma{i}": StageSection() for i in range(4)},
        description="one XY stage per receive antenna, by name; N = number of stages",
    )
    array: ArraySection = ArraySection()
    receiver: RadioSection = RadioSection(rx_gain_db=30.0)
    clients: ClientsSection = ClientsSection()
    medium: MediumSection = MediumSection()

    @model_validator(mode="after")
    def _check(self) -> LabSection:
        if not self.stages:
            raise ValueError("at least one stage (receive antenna) is needed")
        return self

    @property
    def num_antennas(self) -> int:
        return len(self.stages)


# --- allocation ---------------------------------------------------------------------------------
class BoundSection(Section):
    """Constants of the convergence bound (MODEL.md section 5; ``allocation.bound``).

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
    wasserstein: NonNegFloat = 0.1
    lipschitz_data: NonNegFloat = 1.0
    c1: NonNegFloat = 1.0

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
    selection: Literal["pdd", "hybrid", "random", "greedy", "round_robin"] = "hybrid"
    fairness_floor: Probability = Field(0.2, description="hybrid: each client's minimum participation share")
    latency_budget_s: PositiveFloat = 600.0
    energy_budget_j: PositiveFloat = 5e4
    max_rounds: int = Field(30, ge=1)
    local_steps: int = Field(10, ge=1, description="tau")
    batch_max: int = Field(16, ge=1)
    clock_max_hz: PositiveFloat = 2.0e9
    switched_capacitance: PositiveFloat = Field(1e-28, description="kappa in E = kappa c b f^2")
    cycles_per_sample: PositiveFloat = 2.0e10
    bandwidth_hz: PositiveFloat = 1e6
    payload_reals: int = Field(2_662_400, ge=1, description="q, LoRA parameters sent per round")
    air_overhead_s: NonNegFloat = Field(0.0, description="pilots + sync guard added to each round's airtime")
    bound: BoundSection = BoundSection()
    position_starts: int = Field(4, ge=1, le=64)
    max_outer_iterations: int = Field(50, ge=1)
    tolerance: PositiveFloat = 1e-3
    beamformer_solver: Literal["auto", "cvxpy", "numpy"] = "auto"
    channel_map: str = Field(
        "",
        description="a campaign's run directory (or its table): plan positions on this measured map "
        "instead of the simulated world; required with real radios",
    )
    sweep_engine: Literal["local", "ray", "dask"] = "local"
    sweep_workers: int = Field(2, ge=1)


# --- fl -----------------------------------------------------------------------------------------
class ModelSection(Section):
    source: Literal["tiny", "pretrained"] = Field(
        "tiny", description="tiny: a random small LlamaConfig; pretrained: load `path`"
    )
    path: str = Field("", description="local path (or hub id, if already cached) of the base model")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False
    tiny_hidden: int = Field(64, ge=8)
    tiny_layers: int = Field(2, ge=1)
    tiny_heads: int = Field(4, ge=1)
    tiny_vocab: int = Field(512, ge=64)


class LoraSection(Section):
    r: int = Field(8, ge=1, le=256)
    alpha: PositiveFloat = 16.0
    dropout: Probability = 0.05
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    mode: Literal["standard", "ffa"] = Field("ffa", description="ffa: A frozen and shared, only B sent")


class DataSection(Section):
    source: Literal["generated", "alpaca", "dolly"] = "generated"
    path: str = Field("", description="alpaca/dolly: local JSON or JSONL file")
    partition: Literal["iid", "category", "dirichlet"] = "iid"
    dirichlet_alpha: PositiveFloat = 0.5
    num_samples: int = Field(400, ge=8)
    validation_fraction: Probability = 0.1
    seq_len: int = Field(64, ge=8, le=8192)


class TrainingSection(Section):
    lr: PositiveFloat = 5e-4
    lr_min: PositiveFloat = 1e-6
    local_steps: int = Field(4, ge=1)
    batch_size: int = Field(8, ge=1)
    weight_decay: NonNegFloat = 0.0


class TransportSection(Section):
    bind: str = "tcp://127.0.0.1:5570"
    insecure: bool = Field(False, description="turn CURVE off; allowed on loopback only")
    keys_dir: Path = Path("keys")
    heartbeat_s: PositiveFloat = 1.0
    heartbeat_misses: int = Field(5, ge=1)
    round_deadline_s: PositiveFloat = 120.0
    max_message_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    max_clock_skew_s: PositiveFloat = Field(1e-6, description="refuse to start if radio times disagree more")
    connect: str = Field("", description="the address nodes dial; '' = the bind address")
    join_timeout_s: PositiveFloat = Field(120.0, description="how long the coordinator waits for every node")
    ota_guard_s: NonNegFloat = Field(0.05, description="OTA slot time = radio time now + this guard")


class FLSection(Section):
    rounds: int = Field(5, ge=1, le=10_000)
    aggregation: Literal["ota", "digital"] = "ota"
    airlink: Literal["symbol", "radio"] = "symbol"
    normalization: Literal["max", "mean"] = "max"
    digital_reference: bool = Field(True, description="nodes also upload digitally: NMSE reference, fallback")
    model: ModelSection = ModelSection()
    lora: LoraSection = LoraSection()
    data: DataSection = DataSection()
    training: TrainingSection = TrainingSection()
    transport: TransportSection = TransportSection()


# --- campaign -----------------------------------------------------------------------------------
class CampaignSection(Section):
    step_wavelengths: PositiveFloat = Field(0.25, description="raster step")
    order: Literal["snake", "raster"] = "snake"
    pilots: Literal["sequential", "simultaneous"] = "sequential"
    pilot_length: int = Field(127, ge=8)
    captures_per_point: int = Field(1, ge=1)
    save_iq: bool = True
    table_format: Literal["parquet", "csv"] = "parquet"
    sounder: Literal["radio", "symbol"] = Field(
        "radio",
        description="radio: pilots through the radios (IQ saved as SigMF); "
        "symbol: the symbol-level sim air, no waveform (all-sim labs only)",
    )


class TestbedConfig(Section):
    __test__ = False  # not a pytest test class, despite the name

    run: RunSection = RunSection()
    lab: LabSection = LabSection()
    allocation: AllocationSection = AllocationSection()
    fl: FLSection = FLSection()
    campaign: CampaignSection = CampaignSection()

    @model_validator(mode="after")
    def _cross_checks(self) -> TestbedConfig:
        k, u = self.allocation.clients_per_round, self.lab.clients.count
        if k > u:
            raise ValueError(f"allocation.clients_per_round={k} exceeds lab.clients.count={u}")
        return self


# --- loading ------------------------------------------------------------------------------------
def _describe(error: dict[str, Any]) -> str:
    """Turn one pydantic error into 'must be > 0 (got -0.2)'-style words."""
    kind, ctx = error["type"], error.get("ctx") or {}
    got = error.get("input")
    messages = {
        "greater_than": lambda: f"must be > {ctx.get('gt')}",
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}",
        "less_than": lambda: f"must be < {ctx.get('lt')}",
        "less_than_equal": lambda: f"must be <= {ctx.get('le')}",
        "literal_error": lambda: f"must be one of {ctx.get('expected')}",
        "extra_forbidden": lambda: f"unknown key; allowed here: {', '.join(_allowed_keys(error['loc']))}",
        "missing": lambda: "is required",
        "string_pattern_mismatch": lambda: f"must match {ctx.get('pattern')}",
        "finite_number": lambda: "must be a finite number",
    }
    text = messages[kind]() if kind in messages else error["msg"][0].lower() + error["msg"][1:]
    if kind in ("missing", "extra_forbidden"):  # no value to show, or the key itself is the news
        return text
    return f"{text} (got {got!r})"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section that holds the unknown key at ``loc``."""
    model: Any = TestbedConfig
    for part in loc[:-1]:
        if isinstance(part, str) and "[" in part:
            continue
        fields = getattr(model, "model_fields", {})
        if part in fields:
            annotation = fields[part].annotation
            args = getattr(annotation, "__args__", ())
            model = args[-1] if getattr(annotation, "__origin__", None) is dict else annotation
        # a dict key (a stage name) keeps the value model chosen above
    return sorted(getattr(model, "model_fields", {}))


def _path(loc: tuple[Any, ...]) -> str:
    # Drop pydantic's internal tags (e.g. 'function-after[...]'), keep fields and dict keys.
    parts = [str(p) for p in loc if not (isinstance(p, str) and "[" in p)]
    return ".".join(parts) or "<root>"


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        if error["type"] == "value_error":
            msg = str(error.get("ctx", {}).get("error", error["msg"]))
            lines.append(f"{source}: {_path(error['loc'])}: {msg}")
        else:
            lines.append(f"{source}: {_path(error['loc'])}: {_describe(error)}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], yaml-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected a.b.c=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(p.strip() for p in path):
        raise ConfigError(f"--set {text!r}: empty name in the dotted path {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"--set {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def validate(data: Any, source: str = "<config>") -> TestbedConfig:
    """Validate a plain mapping; raise ``ConfigError`` naming source, field, value, rule."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections (got {type(data).__name__})"
        )
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"{source}: section names must be strings (got {bad_keys[0]!r})")
    try:
        return TestbedConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. unhashable keys deep inside
        raise ConfigError(f"{source}: invalid value ({exc})") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    return data if data is not None else {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TestbedConfig:
    """Read ``path`` (or the defaults), apply ``a.b=value`` overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (got {type(data).__name__})")
    source = str(path) if path is not None else "<defaults>"
    if overrides:
        data = apply_overrides(data, overrides)
        source += " (with --set overrides)"
    return validate(data, source)


def to_yaml(config: TestbedConfig) -> str:
    """The resolved config as YAML (every default written out), loadable again."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


__all__ = [
    "ConfigError",
    "TestbedConfig",
    "apply_overrides",
    "load_config",
    "to_yaml",
    "validate",
]
