"""Every command line the README and the user guide (docs/) document parses with the project's
own argument parsers.

Code-block lines and inline `testbed ...` / `python3 -m <project module>` spans are taken as
written; the synopsis notation is expanded first: `a|b|c` gives one command per alternative,
`[...]` marks an optional part (kept, without its `...`), UPPERCASE placeholders get a sample
value, and a shell redirection or a trailing `&` is dropped. An option that does not exist (the
README once showed the radio server's `--keys`) fails here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

from testbed import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The guide's pages; docs/paper/ holds what bench_paper writes, not pages written by hand.
GUIDE = sorted(p for p in (ROOT / "docs").rglob("*.md") if "paper" not in p.relative_to(ROOT / "docs").parts)
SAMPLES = {
    "CONFIG": "configs/dryrun.yaml",
    "RUN_DIR": "runs/dryrun-1",
    "DIR": "keys",
    "NAME": "ma0",
    "X": "0.1",
    "Y": "0.2",
    "I": "1",
    "U": "4",
    "N": "2",
    "ADDR": "tcp://127.0.0.1:5570",
    "SCHEME": "fpa",
}
# A bare `testbed` names the tool; `python -m json.tool` and the like are not the project's.
COMMAND = re.compile(r"^(testbed [a-z]|python3? -m (drivers|sim|testbed|fl|allocation)\.[\w.]+)")


def _expand(line: str) -> list[str]:
    """One synopsis line -> concrete command lines."""
    line = re.sub(r"\s+#.*$", "", line).strip()
    line = re.sub(r"\s+\d?>.*$", "", line).removesuffix("&").strip()  # the shell's redirections
    line = line.replace("[", "").replace("]", "").replace(" ...", "")
    if "|" not in line:
        return [line]
    pieces = line.split("|")
    prefix, first = pieces[0].rsplit(" ", 1)
    last, suffix = (pieces[-1].split(" ", 1) + [""])[:2]
    return [f"{prefix} {alt} {suffix}".strip() for alt in [first, *pieces[1:-1], last]]


def documented_commands(text: str) -> list[str]:
    found: list[str] = []
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if COMMAND.match(line.strip()):
                found += _expand(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if COMMAND.match(span):
            found += _expand(span)
    return found


def _argv(command: str) -> tuple[argparse.ArgumentParser, list[str]]:
    words = [SAMPLES.get(w, w) for w in shlex.split(command)]
    unknown = [w for w in words if re.fullmatch(r"[A-Z][A-Z_]*", w)]
    assert not unknown, f"{command!r}: no sample value for placeholder(s) {unknown}; add them to SAMPLES"
    if words[0] == "testbed":
        return cli.build_parser(), words[1:]
    module = words[2]
    parser = importlib.import_module(module).build_parser()  # every `python -m` tool has one
    return parser, words[3:]


README_COMMANDS = documented_commands(README.read_text(encoding="utf-8"))
GUIDE_COMMANDS = {
    p.relative_to(ROOT).as_posix(): documented_commands(p.read_text(encoding="utf-8")) for p in GUIDE
}
COMMANDS = [("README.md", c) for c in README_COMMANDS] + [
    (page, c) for page, commands in GUIDE_COMMANDS.items() for c in commands
]


def test_the_readme_and_guide_document_the_commands_this_test_expects() -> None:
    assert len(README_COMMANDS) >= 10
    assert {c.split()[1] for c in README_COMMANDS} >= {"run", "compare", "measure", "watch", "serve", "stop"}
    every = [c for _, c in COMMANDS]
    assert len(every) >= 60
    assert any(c.startswith("python3 -m drivers.usrp_server") for c in every)
    assert any(c.startswith("python -m sim.serial_url grbl") for c in every)
    stage = [c for c in every if c.startswith("testbed stage ")]
    assert {c.split()[2] for c in stage} >= {"status", "home", "move", "stop"}
    # Every tutorial is read: each has commands of its own.
    for page in ["first-dry-run", "compare", "campaign", "hardware", "console"]:
        assert GUIDE_COMMANDS[f"docs/tutorials/{page}.md"], page


@pytest.mark.parametrize(("page", "command"), COMMANDS)
def test_every_documented_command_parses(page: str, command: str) -> None:
    parser, argv = _argv(command)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(
                f"{page}: command {command!r} does not parse: {err.getvalue().strip()} (exit {exc.code})"
            )


def test_a_wrong_option_is_caught() -> None:
    """The check itself can fail: the README's old radio server line."""
    old = 'python3 -m drivers.usrp_server --args "type=b200" --bind tcp://0.0.0.0:5600 --keys keys/'
    parser, argv = _argv(old)
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert "unrecognized arguments: --keys" in err.getvalue()
