"""The house rules, read from the source with ``ast`` (nothing is imported):

- the project's import graph has no circles, counting module-level and function-level imports
  and ``importlib.import_module("...")`` with a literal name;
- an import also runs the ``__init__`` of every package above the module it names (importing
  ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py``), so those count as arrows too, except
  the packages the importing module sits in itself (Python has started them before it runs);
- every arrow that runs up a floor (shared/DESIGN.md: ``testbed`` on top; ``sim`` implements the
  drivers' contracts; ``fl`` below both; ``drivers`` and ``allocation`` at the bottom) carries a
  one-line ``# up a floor: <why>`` comment on the import line or right above its import block;
- no module of any of the five packages is over 600 lines (``PENDING_SPLIT`` lists the ones a
  change in flight is splitting);
- a constructor with ``WIDE_CONSTRUCTOR`` or more parameters names each one in a numpydoc
  ``Parameters`` block of its class or ``__init__`` docstring.
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
MAX_LINES = 600
# Modules that a change in flight is splitting, skipped by the 600-line rule. Each entry is removed
# by the change that splits it (the rule fails on an entry that is already short enough).
PENDING_SPLIT: set[str] = set()
WIDE_CONSTRUCTOR = 8
# Constructors still to be documented, as "path:Class", each removed by the change that does it.
PENDING_PARAMETERS: set[str] = set()


@dataclass(frozen=True)
class Arrow:
    source: str  # importing module
    target: str  # imported project module
    path: Path
    line: int  # first line of the import statement
    end_line: int
    # True: the statement names a module below ``target``, and importing it runs target's __init__.
    implicit: bool = False

    def where(self, root: Path) -> str:
        how = f" (runs {self.target.replace('.', '/')}/__init__.py)" if self.implicit else ""
        return f"{self.source} -> {self.target}{how} at {self.path.relative_to(root)}:{self.line}"


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


def packages_run_by(source: str, target: str, modules: dict[str, Path]) -> list[str]:
    """The package ``__init__`` modules that importing ``target`` runs for ``source``: every
    package above ``target``, less those ``source`` sits in (already started before it runs)."""
    parts = target.split(".")
    above = [".".join(parts[:i]) for i in range(1, len(parts))]
    return [p for p in above if p in modules and source != p and not source.startswith(p + ".")]


def import_arrows(root: Path) -> list[Arrow]:
    """Every import of one project module by another, at any depth of the code, with the package
    ``__init__`` modules each import runs on the way."""
    modules = project_modules(root)
    arrows = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = _imported_names(node, module, path.name == "__init__.py")
            targets = {_resolve(name, modules) for name in names} - {None, module}
            end = getattr(node, "end_lineno", None) or getattr(node, "lineno", 0)
            implicit = {p for t in targets for p in packages_run_by(module, t, modules)} - targets
            for target in sorted(targets):
                arrows.append(Arrow(module, target, path, node.lineno, end))
            for package in sorted(implicit):
                arrows.append(Arrow(module, package, path, node.lineno, end, implicit=True))
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


def one_cycle(circle: list[str], arrows: list[Arrow]) -> list[Arrow]:
    """One closed path through the modules of ``circle`` (shortest from its first module back),
    so the message shows which statements to change."""
    inside = set(circle)
    first: dict[tuple[str, str], Arrow] = {}
    for a in arrows:
        if a.source not in inside or a.target not in inside:
            continue
        # An explicit arrow says more than the implicit one of the same pair.
        if (a.source, a.target) not in first or first[(a.source, a.target)].implicit:
            first[(a.source, a.target)] = a
    start = circle[0]
    paths: dict[str, list[Arrow]] = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for (a, b), arrow in sorted(first.items()):
                if a != v:
                    continue
                if b == start:
                    return [*paths[v], arrow]
                if b not in paths:
                    paths[b] = [*paths[v], arrow]
                    nxt.append(b)
        frontier = nxt
    return []


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
    arrows = list(_project_arrows())
    circles = find_circles(arrows)
    shown = [
        " <-> ".join(c) + "\n    " + "\n    ".join(a.where(ROOT) for a in one_cycle(c, arrows))
        for c in circles
    ]
    assert circles == [], "import circles (each a set of modules importing one another):\n" + "\n".join(shown)


def test_every_upward_arrow_says_why() -> None:
    texts: dict[Path, list[str]] = {}
    bare = []
    for arrow in _project_arrows():
        # An implicit arrow comes from the same statement as its explicit one, checked there.
        if arrow.implicit or not runs_up(arrow):
            continue
        lines = texts.setdefault(arrow.path, arrow.path.read_text(encoding="utf-8").splitlines())
        if not has_why_comment(arrow, lines):
            bare.append(f"{arrow.path.relative_to(ROOT)}:{arrow.line}: {arrow.source} -> {arrow.target}")
    assert bare == [], (
        f"imports up a floor without a one-line '# {UP_MARK} <why>' comment on or above them:\n"
        + "\n".join(bare)
    )


def module_lengths(root: Path) -> dict[str, int]:
    """Lines per module of the five packages, by path relative to ``root``."""
    return {
        path.relative_to(root).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in project_modules(root).values()
    }


def long_modules(lengths: dict[str, int], pending: set[str]) -> dict[str, int]:
    """Modules over ``MAX_LINES`` that no change in flight is splitting."""
    return {path: n for path, n in lengths.items() if n > MAX_LINES and path not in pending}


def test_no_module_is_over_600_lines() -> None:
    long = long_modules(module_lengths(ROOT), PENDING_SPLIT)
    assert long == {}, f"modules over {MAX_LINES} lines (split them by job): {long}"


def test_every_pending_split_is_still_pending() -> None:
    lengths = module_lengths(ROOT)
    done = {path: lengths.get(path, 0) for path in PENDING_SPLIT if lengths.get(path, 0) <= MAX_LINES}
    assert done == {}, f"split already (lines now; 0: gone): remove them from PENDING_SPLIT: {done}"


def undocumented_parameters(path: Path, root: Path) -> dict[str, list[str]]:
    """ "path:Class" -> the parameters of its wide ``__init__`` that no ``Parameters`` block names."""
    out = {}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for init in (f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"):
            a = init.args
            names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]][1:]
            if len(names) < WIDE_CONSTRUCTOR:
                continue
            doc = (ast.get_docstring(cls) or "") + "\n" + (ast.get_docstring(init) or "")
            block = doc.partition("Parameters\n----------\n")[2]
            # numpydoc lets one entry name several parameters: "x1, x2 : type".
            named = {
                name.strip()
                for line in block.splitlines()
                if line and not line[0].isspace()
                for name in line.split(" :")[0].split(",")
            }
            missing = [n for n in names if n not in named]
            if missing:
                out[f"{path.relative_to(root).as_posix()}:{cls.name}"] = missing
    return out


def test_every_wide_constructor_names_its_parameters() -> None:
    missing = {}
    for path in project_modules(ROOT).values():
        missing.update(undocumented_parameters(path, ROOT))
    missing = {k: v for k, v in missing.items() if k not in PENDING_PARAMETERS}
    assert missing == {}, (
        f"constructors with {WIDE_CONSTRUCTOR}+ parameters must say what each is, in a numpydoc "
        f"Parameters block (or take a small typed settings object): {missing}"
    )


# --- the checks themselves can fail ---------------------------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in FLOORS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
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


def test_a_circle_through_a_package_init_is_found(tmp_path: Path) -> None:
    # The shape of the circle this rule first found: channel_map reads the campaign's table,
    # whose package face imports sounding, which drew the world, which loaded the channel map.
    root = _tree(
        tmp_path,
        {
            "testbed/channel_map.py": "def f():\n    from testbed.campaign.table import read\n",
            "testbed/campaign/__init__.py": "from testbed.campaign.sounding import s\n",
            "testbed/campaign/table.py": "",
            "testbed/campaign/sounding.py": "def g():\n    from testbed.world import w\n",
            "testbed/world.py": "def h():\n    from testbed.channel_map import m\n",
        },
    )
    arrows = import_arrows(root)
    (circle,) = find_circles(arrows)
    assert circle == ["testbed.campaign", "testbed.campaign.sounding", "testbed.channel_map", "testbed.world"]
    path = one_cycle(circle, arrows)
    assert [(a.source, a.target, a.implicit) for a in path] == [
        ("testbed.campaign", "testbed.campaign.sounding", False),
        ("testbed.campaign.sounding", "testbed.world", False),
        ("testbed.world", "testbed.channel_map", False),
        ("testbed.channel_map", "testbed.campaign", True),
    ]
    assert "runs testbed/campaign/__init__.py" in path[-1].where(root)


def test_a_package_face_and_its_own_modules_make_no_circle(tmp_path: Path) -> None:
    # The face imports its modules and they import each other: Python has started the package
    # before any of them runs, so no __init__ arrow is counted from inside it.
    root = _tree(
        tmp_path,
        {
            "sim/pkg/__init__.py": "from sim.pkg.a import x\n",
            "sim/pkg/a.py": "from sim.pkg.b import y\n",
            "sim/pkg/b.py": "import sim.pkg.c\n",
            "sim/pkg/c.py": "",
            "fl/user.py": "from sim.pkg.b import y\n",
        },
    )
    arrows = import_arrows(root)
    assert find_circles(arrows) == []
    implicit = sorted((a.source, a.target) for a in arrows if a.implicit)
    assert implicit == [("fl.user", "sim"), ("fl.user", "sim.pkg")]


def test_the_line_rule_covers_every_package_and_skips_only_pending_splits(tmp_path: Path) -> None:
    long_text = "x = 1\n" * (MAX_LINES + 1)
    root = _tree(
        tmp_path,
        {
            "drivers/big.py": long_text,
            "allocation/sub/deep.py": long_text,
            "fl/coordinator.py": long_text,
            "sim/ok.py": "x = 1\n" * MAX_LINES,
        },
    )
    lengths = module_lengths(root)
    assert long_modules(lengths, {"fl/coordinator.py"}) == {
        "allocation/sub/deep.py": MAX_LINES + 1,
        "drivers/big.py": MAX_LINES + 1,
    }
    assert "fl/coordinator.py" in long_modules(lengths, set())


def test_a_wide_constructor_without_its_parameters_is_found(tmp_path: Path) -> None:
    args = ", ".join(f"p{i}: int = 0" for i in range(WIDE_CONSTRUCTOR))
    named = "".join(f"    p{i}\n        What p{i} is.\n" for i in range(WIDE_CONSTRUCTOR - 1))
    text = (
        f'class Wide:\n    """A wide one.\n\n    Parameters\n    ----------\n{named}    """\n\n'
        f"    def __init__(self, {args}) -> None:\n        pass\n\n\n"
        f"class Narrow:\n    def __init__(self, a: int, b: int) -> None:\n        pass\n"
    )
    root = _tree(tmp_path, {"sim/wide.py": text})
    assert undocumented_parameters(root / "sim/wide.py", root) == {
        "sim/wide.py:Wide": [f"p{WIDE_CONSTRUCTOR - 1}"]
    }
    last = f"    p{WIDE_CONSTRUCTOR - 1}\n        The last one.\n"
    (root / "sim/wide.py").write_text(text.replace(named, named + last))
    assert undocumented_parameters(root / "sim/wide.py", root) == {}


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
    (arrow,) = [a for a in import_arrows(root) if runs_up(a) and not a.implicit]
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
