"""MkDocs hook: the guide's reference pages, generated from the code at every build.

- ``reference/config.md``: every config field (dotted path, type, default, limits, description)
  from the pydantic models of ``testbed.config``;
- ``reference/cli.md``: every ``testbed`` command and option from ``testbed.cli.build_parser()``,
  and the ``python -m`` tools the guide uses;
- ``reference/records.md``: the record formats, from the docstrings and constants that define
  them (``testbed.records``, ``testbed.console``, ``testbed.campaign``, ``testbed.compare``).

A page may also say ``<!-- paper-results -->``: the hook puts there what ``make paper`` wrote
into ``docs/paper/`` (figures, the markdown table, the JSON), or a note while none exists, so the
guide's numbers are never typed by hand.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
PAPER_MARK = "<!-- paper-results -->"
# ``<!-- docstring: package.module -->`` puts that module's docstring there, as text.
DOCSTRING_MARK = re.compile(r"<!-- docstring: ([\w.]+) -->")
# The python -m tools the guide runs, each with a build_parser() of its own.
MODULE_TOOLS = ("drivers.usrp_server", "sim.serial_url")
# Whose end-of-line comments stand in for a missing field description, first one wins.
CONFIG_EXAMPLES = ("lab", "dryrun", "campaign", "edge", "paper")


def _import_project() -> None:
    # mkdocs runs from the repository root; this makes the hook work from anywhere.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def _code_root() -> Path:
    """The checkout whose code the pages describe (where ``testbed`` is imported from)."""
    import importlib.util

    return Path(importlib.util.find_spec("testbed").origin).parent.parent


# --- config -------------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return ("one of " if len(args) > 1 else "") + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _limits(field: Any) -> str:
    words = []
    symbols = {
        "gt": ">",
        "ge": ">=",
        "lt": "<",
        "le": "<=",
        "min_length": "length >=",
        "max_length": "length <=",
    }
    for item in field.metadata:
        for attr, symbol in symbols.items():
            value = getattr(item, attr, None)
            if value is not None:
                words.append(f"{symbol} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            words.append(f"matches `{pattern}`")
        if getattr(item, "allow_inf_nan", None) is False:
            words.append("finite")
    return ", ".join(words)


def _default(field: Any) -> str:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default is PydanticUndefined else field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
        return ", ".join(f"`{k}`" for k in value)
    if isinstance(value, Path):
        value = str(value)
    text = json.dumps(value, default=str)
    return f"`{text}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def config_rows(model: Any, prefix: str = "") -> list[tuple[str, str, str, str, str]]:
    """(path, type, default, limits, description) for every leaf field under ``model``."""
    from pydantic import BaseModel

    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
            rows += config_rows(annotation, path + ".")
            continue
        args = typing.get_args(annotation)
        if (
            typing.get_origin(annotation) is dict
            and inspect.isclass(args[-1])
            and issubclass(args[-1], BaseModel)
        ):
            rows.append(
                (path, f"map of name to {args[-1].__name__}", _default(field), "", field.description or "")
            )
            rows += config_rows(args[-1], path + ".<name>.")
            continue
        rows.append((path, _type_name(annotation), _default(field), _limits(field), field.description or ""))
    return rows


def yaml_comments(paths: list[Path]) -> dict[str, tuple[str, str]]:
    """``dotted.path -> (comment, file)`` from the end-of-line comments of the example configs,
    for the fields whose model gives no description. Stage names become ``<name>``."""
    found: dict[str, tuple[str, str]] = {}
    key_line = re.compile(r"^(\s*)([A-Za-z_][\w]*):\s*(.*?)\s+#\s*(.+)$")
    plain_key = re.compile(r"^(\s*)([A-Za-z_][\w]*):")
    for path in paths:
        stack: list[tuple[int, str]] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.lstrip().startswith(("#", "-")):
                continue
            m = plain_key.match(line)
            if not m:
                continue
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            keys = [k for _, k in stack] + [m.group(2)]
            if len(keys) >= 3 and keys[:2] == ["lab", "stages"]:
                keys[2] = "<name>"
            dotted = ".".join(keys)
            c = key_line.match(line)
            # A comment on a mapping's own line describes the mapping, not one field.
            if c and not c.group(3).startswith("{"):
                found.setdefault(dotted, (c.group(4).strip(), f"configs/{path.name}"))
            stack.append((indent, m.group(2)))
    return found


def config_page() -> str:
    _import_project()
    from pydantic import BaseModel

    from testbed.config import TestbedConfig

    lines = [
        "# Config reference",
        "",
        "Generated from the pydantic models in `testbed/config/` at every build of this guide: it",
        "cannot drift from the code. Every field can be set in the YAML file or with",
        "`--set path=value` (the value is parsed as YAML). Unknown keys are errors, and a bad value",
        "is reported with the file, the field, the value and what is allowed. Units are SI and named",
        "by suffix (`_m`, `_hz`, `_s`, `_w`, `_db`, `_dbm`). Where a model gives a field no",
        "description, the comment on that field in one of the example configs stands in, marked so.",
        "",
    ]
    comments = yaml_comments([_code_root() / "configs" / f"{n}.yaml" for n in CONFIG_EXAMPLES])
    for name, field in TestbedConfig.model_fields.items():
        section = field.annotation
        assert inspect.isclass(section) and issubclass(section, BaseModel)
        lines += [f"## `{name}`", ""]
        doc = inspect.getdoc(section)
        if doc and section.__doc__ is not None and "__doc__" in section.__dict__:
            lines += [doc.split("\n\n")[0].replace("\n", " "), ""]
        lines += ["| field | type | default | limits | description |", "|---|---|---|---|---|"]
        for path, kind, default, limits, desc in config_rows(section, f"{name}."):
            if not desc and path in comments:
                desc = f"{comments[path][0]} (a comment in `{comments[path][1]}`)"
            lines.append(f"| `{path}` | {_cell(kind)} | {_cell(default)} | {_cell(limits)} | {_cell(desc)} |")
        lines.append("")
    return "\n".join(lines)


# --- CLI ----------------------------------------------------------------------------------------
def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| argument | default | help |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0:
                name += f" {action.metavar or action.dest.upper()}"
        else:
            name = action.metavar or action.dest.upper()
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) else f"`{default}`"
        choices = f" (one of {', '.join(map(str, action.choices))})" if action.choices else ""
        rows.append(f"| `{_cell(name)}` | {_cell(shown)} | {_cell((action.help or '') + choices)} |")
    return rows


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def cli_page() -> str:
    _import_project()
    from testbed import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [
        "# Command reference",
        "",
        "Generated from the argparse parsers (`testbed/cli.py` `build_parser()`) at every build of",
        "this guide. Every command also takes `-q/--quiet`, `--json` and `-v/--verbose`, before or",
        "after its name. Exit codes: 0 done, 1 a check failed (for example an infeasible plan),",
        "2 bad input or a device error (the message names what), 130 interrupted.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [f"| [`testbed {n}`](#testbed-{n}) | {_cell(h)} |" for n, h in cli.COMMANDS.items()]
    lines.append("")
    for name, child in sub.choices.items():
        lines += [
            f"## testbed {name} {{#testbed-{name}}}",
            "",
            cli.COMMANDS[name],
            "",
            "```text",
            _usage(child),
            "```",
            "",
        ]
        lines += _option_rows(child)
        lines.append("")
    lines += ["## Tools run with `python -m`", ""]
    for module in MODULE_TOOLS:
        tool = importlib.import_module(module)
        p = tool.build_parser()
        summary = (inspect.getdoc(tool) or "").split("\n\n")[0].replace("\n", " ")
        lines += [f"### `python -m {module}`", "", summary, "", "```text", _usage(p), "```", ""]
        lines += _option_rows(p)
        lines.append("")
    return "\n".join(lines)


# --- record formats -----------------------------------------------------------------------------
def _doc(module: str, obj: str | None = None) -> str:
    target = importlib.import_module(module)
    if obj:
        for part in obj.split("."):
            target = getattr(target, part)
    return inspect.getdoc(target) or ""


def _block(text: str) -> list[str]:
    return ["```text", text.strip(), "```", ""]


def records_page() -> str:
    _import_project()
    from fl.phases import PHASES
    from testbed.campaign import common

    lines = [
        "# Record formats",
        "",
        "Generated at every build from the docstrings and constants that define each format, so",
        "this page says what the code says. Where a run directory's files are described in prose",
        "elsewhere in the guide, this page is the reference.",
        "",
        "## The run directory",
        "",
        "From `testbed/records.py`:",
        "",
        *_block(_doc("testbed.records")),
        "In `fl/`: `fl/checkpoints/round-NNNN/` holds `adapter.safetensors` and `state.json` for each",
        "completed round (`--resume` starts from the one `LATEST` names); `fl/events.jsonl` has the",
        "coordinator's events, `initial_eval` among them (the validation loss before round 1);",
        "`fl/logs/` has each node's log.",
        "",
        "## `events.jsonl` documents",
        "",
        "One JSON object a line. A `start` document opens the file (the run's metadata: scheme,",
        "num_clients, region_m, rounds, stages, backends), `event` documents (`kind` and `data`)",
        "follow, and a `stop` document (`status`, `reason`) closes it.",
        "",
        "### Round events",
        "",
        "From `testbed/report.py`, which reads them:",
        "",
        *_block(_doc("testbed.report")),
        "### The console's live documents",
        "",
        "From `testbed/console/__init__.py`:",
        "",
        *_block(_doc("testbed.console")),
        f"The phases, in order: {', '.join(f'`{p}`' for p in PHASES)}.",
        "",
        "## `summary.json`",
        "",
        "Written when a run ends (also when it is stopped). An experiment's keys are those of",
        "`summarize_run` in `testbed/run_summary.py`:",
        "",
        *_block(_summary_keys()),
        "`first_val_loss` is the validation loss after round 1; the loss before any training is the",
        "`initial_eval` event of `fl/events.jsonl`, which the report draws at round 0.",
        "A run that `testbed stop` ended early adds `stopped` (why; `--resume` continues it); one",
        "whose budgets could not pay its next round adds `budget_end` (the budget, what was left and",
        "what the round needed), and its `stop` document says the same with status `success`.",
        "A campaign's `summary.json` has `kind: campaign` and the grid, the counts, the median SNR",
        "and each receive chain's estimated gain and phase.",
        "",
        "## The campaign",
        "",
        *_block(_doc("testbed.campaign")),
        "### The table (`channels.parquet` or `channels.csv`)",
        "",
        "One row per point, antenna and client; its columns, in order:",
        "",
        ", ".join(f"`{c}`" for c in common.TABLE_COLUMNS),
        "",
        "### SigMF fields",
        "",
        f"Extensions: `spatial` {common.SPATIAL_VERSION} and the project's own namespace",
        f"`{common.SIGMF_NAMESPACE}:` ({common.SIGMF_NAMESPACE_VERSION}); the collection is",
        f"`{common.COLLECTION_NAME}.sigmf-collection`. From `write_sigmf`:",
        "",
        *_block(_doc("testbed.campaign.recording", "write_sigmf")),
        "## The compare directory",
        "",
        *_block(_doc("testbed.compare")),
        "### A cell",
        "",
        *_block(_doc("testbed.compare.engine")),
    ]
    return "\n".join(lines)


def _summary_keys() -> str:
    """The keys of the summary dict, read from ``summarize_run``'s source (``testbed/run_summary.py``)."""
    import ast
    import importlib.util

    # Found, not imported, so the page needs nothing the module imports.
    origin = importlib.util.find_spec("testbed.run_summary").origin
    tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "summarize_run":
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Dict):
                    return "\n".join(k.value for k in ret.value.keys if isinstance(k, ast.Constant))
    raise RuntimeError("testbed/run_summary.py: summarize_run returns no dict literal")


# --- the paper's results ------------------------------------------------------------------------
def paper_results(paper_dir: Path = DOCS / "paper") -> str:
    """What ``make paper`` wrote into docs/paper/, as markdown; a note while it has not run.

    Its markdown files come first, their relative links pointed into paper/; then each figure
    they do not show themselves; then the JSON as it is."""
    files = sorted(p for p in paper_dir.glob("*") if p.is_file()) if paper_dir.is_dir() else []
    markdown = [p for p in files if p.suffix == ".md"]
    if not any(p.suffix in {".png", ".md", ".json"} for p in files):
        return (
            '!!! note "Not generated yet"\n'
            "    `make paper` runs the sweep and writes the figure, the table and the JSON into\n"
            "    `docs/paper/`; the next `make docs` shows them here.\n"
        )
    out: list[str] = []
    for p in markdown:
        text = p.read_text(encoding="utf-8").strip()
        # Links written relative to docs/paper/ must resolve from this page, one folder up.
        out += [re.sub(r"(\]\()(?![a-z]+:|/|#)", r"\1paper/", text), ""]
    shown = "\n".join(out)
    for p in files:
        if p.suffix == ".png" and f"paper/{p.name}" not in shown:
            out += [f"![{p.stem}](paper/{p.name})", ""]
    for p in files:
        if p.suffix == ".json":
            out += [f"`{p.name}`:", "", "```json", p.read_text(encoding="utf-8").strip(), "```", ""]
    return "\n".join(out)


# --- the MkDocs hook ----------------------------------------------------------------------------
GENERATED = {
    "reference/config.md": config_page,
    "reference/cli.md": cli_page,
    "reference/records.md": records_page,
}


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for uri, make in GENERATED.items():
        files.append(File.generated(config, uri, content=make()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if PAPER_MARK in markdown:
        markdown = markdown.replace(PAPER_MARK, paper_results())
    _import_project()
    return DOCSTRING_MARK.sub(lambda m: "\n".join(_block(_doc(m.group(1)))), markdown)
