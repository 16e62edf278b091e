"""The house rules, read from the source with ``ast`` (nothing is imported):

- the project's import graph has no circles, counting module-level and function-level imports
  and ``importlib.import_module("...")`` with a literal name;
- every arrow that runs up a floor (shared/DESIGN.md: ``testbed`` on top; ``sim`` implements the
  drivers' contracts; ``fl`` below both; ``drivers`` and ``allocation`` at the bottom) carries a
  one-line ``# up a floor: <why>`` comment on the import line or right above its import block;
- no module in ``testbed/`` is over 600 lines.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Higher imports lower. An arrow to the same or a higher floor in another package runs up.
FLOORS = {"testbed": 3, "sim": 2, "fl": 1, "drivers": 0, "allocation": 0}
UP_MARK = "up a floor:"
MAX_TESTBED_LINES = 600


@dataclass(frozen=True)
class Arrow:
    source: str  # importing module
    target: str  # imported project module
    path: Path
    line: int  # first line of the import statement
    end_line: int


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the five packages."""
    modules = {}
    for package in FLOORS:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (its longest known prefix), or None if outside."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) if parts else None


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        # `from a import b` imports the module a.b if there is one, else the name b from a
        return [f"{base}.{alias.name}" for alias in node.names]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [node.args[0].value]
    return []


def import_arrows(root: Path) -> list[Arrow]:
    """Every import of one project module by another, at any depth of the code."""
    modules = project_modules(root)
    arrows = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = _imported_names(node, module, path.name == "__init__.py")
            targets = {_resolve(name, modules) for name in names} - {None, module}
            for target in sorted(targets):
                end = getattr(node, "end_lineno", None) or node.lineno
                arrows.append(Arrow(module, target, path, node.lineno, end))
    return arrows


def find_circles(arrows: list[Arrow]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for a in arrows:
        graph.setdefault(a.source, set()).add(a.target)
        graph.setdefault(a.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def runs_up(arrow: Arrow) -> bool:
    source, target = arrow.source.split(".")[0], arrow.target.split(".")[0]
    return source != target and FLOORS[target] >= FLOORS[source]


def _is_import_line(text: str) -> bool:
    return text.startswith(("from ", "import ", ")")) or (text.endswith(",") and " " not in text)


def has_why_comment(arrow: Arrow, lines: list[str]) -> bool:
    """An ``# up a floor: <why>`` comment on the statement's lines, or on the line above the block
    of import statements it sits in."""
    own = lines[arrow.line - 1 : arrow.end_line]
    if any(UP_MARK in line.partition("#")[2] for line in own):
        return _why_ok(next(line for line in own if UP_MARK in line.partition("#")[2]))
    i = arrow.line - 2
    while i >= 0 and _is_import_line(lines[i].strip()):
        i -= 1
    return i >= 0 and lines[i].strip().startswith("#") and _why_ok(lines[i])


def _why_ok(line: str) -> bool:
    why = line.partition(UP_MARK)[2].strip()
    return len(why.split()) >= 3  # a reason, not a bare marker


@functools.cache
def _project_arrows() -> tuple[Arrow, ...]:
    """The project's arrows, parsed once for the tests below."""
    return tuple(import_arrows(ROOT))


def test_the_import_graph_has_no_circles() -> None:
    circles = find_circles(list(_project_arrows()))
    assert circles == [], "import circles (each a set of modules importing one another):\n" + "\n".join(
        " <-> ".join(c) for c in circles
    )


def test_every_upward_arrow_says_why() -> None:
    texts: dict[Path, list[str]] = {}
    bare = []
    for arrow in _project_arrows():
        if not runs_up(arrow):
            continue
        lines = texts.setdefault(arrow.path, arrow.path.read_text(encoding="utf-8").splitlines())
        if not has_why_comment(arrow, lines):
            bare.append(f"{arrow.path.relative_to(ROOT)}:{arrow.line}: {arrow.source} -> {arrow.target}")
    assert bare == [], (
        f"imports up a floor without a one-line '# {UP_MARK} <why>' comment on or above them:\n"
        + "\n".join(bare)
    )


def test_no_testbed_module_is_over_600_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / "testbed").rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_TESTBED_LINES
    }
    assert long == {}, f"testbed modules over {MAX_TESTBED_LINES} lines (split them by job): {long}"


# --- the checks themselves can fail ---------------------------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in FLOORS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_function_level_circle_is_found(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "testbed/a.py": "def f():\n    from testbed.b import g\n",
            "testbed/b.py": "from testbed import a\n",
            "sim/x.py": "import importlib\nimportlib.import_module('sim.y')\n",
            "sim/y.py": "from .x import z\n",
        },
    )
    assert find_circles(import_arrows(root)) == [["sim.x", "sim.y"], ["testbed.a", "testbed.b"]]


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("from testbed.config import load_config\n", False),
        ("import testbed.config  # noqa: F401\n", False),  # a comment, but no why
        ("# up a floor:\nfrom testbed.config import load_config\n", False),  # a marker, no reason
        ("import testbed.config  # up a floor: the node loads its config file\n", True),
        ("# up a floor: the node loads its config file\nimport os\nfrom testbed import config\n", True),
        ("# up a floor: the node loads its config file\n\nfrom testbed import config\n", False),
    ],
)
def test_an_upward_arrow_needs_a_why(tmp_path: Path, text: str, ok: bool) -> None:
    root = _tree(tmp_path, {"testbed/config.py": "", "fl/node.py": text})
    (arrow,) = [a for a in import_arrows(root) if runs_up(a)]
    assert arrow.source == "fl.node" and arrow.target == "testbed.config"
    assert has_why_comment(arrow, (root / "fl/node.py").read_text().splitlines()) is ok


def test_downward_and_in_package_arrows_need_no_comment(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "drivers/errors.py": "",
            "sim/radio.py": "from drivers.errors import X\n",
            "testbed/lab.py": "from sim import radio\nfrom testbed import config\n",
            "testbed/config.py": "",
        },
    )
    assert [a for a in import_arrows(root) if runs_up(a)] == []
