"""Loading a config: YAML files, ``a.b.c=value`` overrides, validation into ``TestbedConfig``, and
pydantic's errors turned into words that name the file, the field path, the value and the rule.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from drivers.errors import ConfigError
from testbed.config.tree import TestbedConfig


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
            path = _path(error["loc"])
            # A cross-field check names its own fields (lab.stages.ma0...): no second path.
            lines.append(f"{source}: {msg}" if msg.startswith(f"{path}.") else f"{source}: {path}: {msg}")
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
