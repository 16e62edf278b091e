"""The cells of a comparison: every (grid point, seed, scheme), each one full FL run.

Within a (grid point, seed) every scheme gets the same config but for the scheme: the same
``run.seed``, hence the same data split, initial weights, channel draw and noise streams. The
seeds are ``run.seed + i`` for i < ``--seeds``. Every option is checked here, before anything
runs, so a bad one exits 2 naming the field and what is allowed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drivers.errors import ConfigError
from testbed.config import TestbedConfig, apply_overrides, read_yaml, to_yaml, validate
from testbed.schemes import SCHEMES

DEFAULT_SCHEMES = ("ours", "fpa", "non_ma", "digital")


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid KEY=v1,v2`` option: a config field and the values it takes."""

    key: str
    values: tuple[Any, ...]

    def label(self, value: Any) -> str:
        return f"{self.key.rsplit('.', 1)[-1]}={value}"


@dataclass(frozen=True)
class Cell:
    """One FL run: a scheme at one grid point and seed (``overrides`` are ``--set`` strings)."""

    cell_id: str
    scheme: str
    point: int  # index of the grid point
    grid: dict[str, Any] = field(default_factory=dict)  # config key -> value at this point
    seed: int = 0  # run.seed of this cell
    overrides: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        return cls(**{**data, "overrides": tuple(data.get("overrides", ()))})


@dataclass
class CompareSpec:
    """What a compare directory holds: the base config, the schemes, the grid and the seeds."""

    config_yaml: str  # the resolved base config (with --set), every default written out
    schemes: list[str]
    grid: list[GridAxis]
    seeds: int

    def fingerprint(self) -> dict[str, str]:
        """A hash per part, so a mismatch on resume can say which part differs."""

        def h(obj: Any) -> str:
            return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

        return {
            "config": h(self.config_yaml),
            "schemes": h(self.schemes),
            "grid": h([[a.key, list(a.values)] for a in self.grid]),
            "seeds": h(self.seeds),
        }

    def config(self) -> TestbedConfig:
        return validate(yaml.safe_load(self.config_yaml), "<compare base config>")

    def cells(self) -> list[Cell]:
        base = self.config()
        points = list(itertools.product(*[a.values for a in self.grid])) if self.grid else [()]
        cells = []
        for p, values in enumerate(points):
            grid = {a.key: v for a, v in zip(self.grid, values, strict=True)}
            for s in range(self.seeds):
                seed = base.run.seed + s
                for scheme in self.schemes:
                    overrides = tuple(f"{k}={json.dumps(v)}" for k, v in grid.items()) + (
                        f"run.seed={seed}",
                        f"run.name=g{p}-s{s}-{scheme}",
                    )
                    cells.append(Cell(f"g{p}-s{s}-{scheme}", scheme, p, grid, seed, overrides))
        return cells

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_yaml": self.config_yaml,
            "schemes": self.schemes,
            "grid": [{"key": a.key, "values": list(a.values)} for a in self.grid],
            "seeds": self.seeds,
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareSpec:
        grid = [GridAxis(a["key"], tuple(a["values"])) for a in data["grid"]]
        return cls(data["config_yaml"], list(data["schemes"]), grid, int(data["seeds"]))


# --- parsing and checking the options ----------------------------------------------------------
def parse_schemes(text: str | None) -> list[str]:
    if text is None:
        return list(DEFAULT_SCHEMES)
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ConfigError(f"--schemes: empty (got {text!r}); allowed: {', '.join(SCHEMES)}")
    bad = [s for s in names if s not in SCHEMES]
    if bad:
        raise ConfigError(f"--schemes: unknown scheme {bad[0]!r}; allowed: {', '.join(SCHEMES)}")
    if len(set(names)) < len(names):
        raise ConfigError(f"--schemes: a scheme is named twice (got {text!r})")
    return names


def _field_exists(data: dict[str, Any], path: list[str]) -> str | None:
    """None if ``path`` names a config field; else what is wrong, with the allowed names."""
    model: Any = TestbedConfig
    node: Any = data
    for i, part in enumerate(path):
        fields = getattr(model, "model_fields", None)
        where = ".".join(path[:i]) or "the top level"
        if fields is None:
            return f"{'.'.join(path[:i])} is a value, not a section"
        if part not in fields:
            return f"{where} has no field {part!r}; allowed: {', '.join(sorted(fields))}"
        annotation = fields[part].annotation
        node = node.get(part, {}) if isinstance(node, dict) else {}
        if getattr(annotation, "__origin__", None) is dict:  # e.g. lab.stages.<name>
            if i + 1 < len(path):
                name = path[i + 1]
                if name not in node:
                    return (
                        f"{'.'.join(path[: i + 1])} has no entry {name!r}; it has {', '.join(sorted(node))}"
                    )
                rest = _field_exists_in(annotation.__args__[-1], path[i + 2 :], ".".join(path[: i + 2]))
                return rest
            return None
        model = annotation
    return None


def _field_exists_in(model: Any, path: list[str], prefix: str) -> str | None:
    for part in path:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            allowed = ", ".join(sorted(fields or {}))
            return f"{prefix} has no field {part!r}; allowed: {allowed}"
        model = fields[part].annotation
        prefix = f"{prefix}.{part}"
    return None


def parse_grid(options: list[str], data: dict[str, Any], source: str) -> list[GridAxis]:
    """``KEY=v1,v2`` options: each KEY a config field, each value valid there (YAML-parsed)."""
    axes: list[GridAxis] = []
    for text in options:
        if "=" not in text:
            raise ConfigError(
                f"--grid {text!r}: expected KEY=v1,v2,... (e.g. allocation.clients_per_round=1,2)"
            )
        key, raw = (part.strip() for part in text.split("=", 1))
        path = key.split(".")
        if not key or not all(path):
            raise ConfigError(f"--grid {text!r}: empty name in the dotted key {key!r}")
        problem = _field_exists(data, path)
        if problem is not None:
            raise ConfigError(f"--grid {key}: not a config field ({problem})")
        if key in {a.key for a in axes}:
            raise ConfigError(f"--grid {key}: given twice; give every value in one --grid {key}=v1,v2")
        if key in ("run.seed", "run.name", "run.output_dir"):
            raise ConfigError(f"--grid {key}: set by compare itself (use --seeds N and --out DIR)")
        values = []
        for item in raw.split(","):
            try:
                value = yaml.safe_load(item) if item.strip() else None
            except yaml.YAMLError as exc:
                raise ConfigError(f"--grid {key}: value {item!r} is not valid YAML ({exc})") from None
            if value is None:
                raise ConfigError(f"--grid {key}: an empty value in {raw!r}; give v1,v2,...")
            values.append(value)
        if len(set(map(json.dumps, values))) < len(values):
            raise ConfigError(f"--grid {key}: a value is given twice (got {raw!r})")
        axes.append(GridAxis(key, tuple(values)))
    return axes


def build_spec(
    config_path: str | Path,
    overrides: list[str],
    schemes: str | None,
    grid: list[str],
    seeds: int,
) -> CompareSpec:
    """Check every option and return the comparison's spec (nothing runs, nothing is written)."""
    data = read_yaml(config_path)
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path}: the top level must be a mapping of sections")
    if overrides:
        data = apply_overrides(data, overrides)
    source = str(config_path) + (" (with --set overrides)" if overrides else "")
    base = validate(data, source)
    names = parse_schemes(schemes)
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1 (got {seeds})")
    axes = parse_grid(grid, data, source)
    spec = CompareSpec(to_yaml(base), names, axes, seeds)
    check_cells(spec, source)
    return spec


def check_cells(spec: CompareSpec, source: str) -> None:
    """Every cell's config must be valid and its rounds payable, before anything runs.

    The error names the cells (every seed and scheme of the grid point) and the field: a value
    invalid on its own (e.g. K above the clients), a combination of values (K <= U across two
    axes), or budgets that cannot pay ``fl.rounds`` at a point (the check each run makes first).
    """
    resolved = yaml.safe_load(spec.config_yaml)
    axes = spec.grid
    points = list(itertools.product(*[a.values for a in axes])) if axes else [()]

    def cells_at(p: int) -> str:
        first, last = f"g{p}-s0-{spec.schemes[0]}", f"g{p}-s{spec.seeds - 1}-{spec.schemes[-1]}"
        return first if first == last else f"cells {first} ... {last}"

    for j, a in enumerate(axes):
        for v in a.values:
            at = [p for p, values in enumerate(points) if values[j] == v]
            where = f"{source} (--grid {a.key}={json.dumps(v)}: {', '.join(cells_at(p) for p in at)})"
            validate(apply_overrides(resolved, [f"{a.key}={json.dumps(v)}"]), where)
    costs: dict[str, Any] = {}
    for p, values in enumerate(points):
        # Every grid point together must be valid too (e.g. K <= U across two axes).
        pairs = [f"{a.key}={json.dumps(v)}" for a, v in zip(axes, values, strict=True)]
        where = f"{source} (grid point {p}, {cells_at(p)}: {', '.join(pairs) or 'the base config'})"
        config = validate(apply_overrides(resolved, pairs), where)
        if config.fl.model.source != "tiny":
            # A pretrained model's files may live only where the cells run (a Dask cluster).
            continue
        from fl.cost import check_rounds, workload_cost

        key = config.fl.model_dump_json() + str(config.run.seed) + str(config.allocation.cycles_per_sample)
        if key not in costs:
            costs[key] = workload_cost(config)
        try:
            check_rounds(config, costs[key])
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def cell_config(spec: CompareSpec, cell: Cell, cells_dir: Path) -> TestbedConfig:
    """The config of one cell: the base, its grid point and seed, its run directory's parent."""
    data = apply_overrides(
        yaml.safe_load(spec.config_yaml),
        [*cell.overrides, f"run.output_dir={json.dumps(str(cells_dir / cell.cell_id))}"],
    )
    return validate(data, f"cell {cell.cell_id}")
