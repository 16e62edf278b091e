"""Every command line README.md documents parses with the project's own argument parsers.

Code-block lines and inline `testbed ...` / `python3 -m ...` spans are taken as written; the
synopsis notation is expanded first: `a|b|c` gives one command per alternative, `[...]` marks
an optional part (kept, without its `...`), and UPPERCASE placeholders get a sample value. An
option that does not exist (the README once showed the radio server's `--keys`) fails here.
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

README = Path(__file__).resolve().parent.parent / "README.md"
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
}
COMMAND = re.compile(r"^(testbed [a-z]|python3? -m [\w.]+)")  # a bare `testbed` names the tool


def _expand(line: str) -> list[str]:
    """One synopsis line -> concrete command lines."""
    line = re.sub(r"\s+#.*$", "", line).strip()
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


COMMANDS = documented_commands(README.read_text(encoding="utf-8"))


def test_the_readme_documents_the_commands_this_test_expects() -> None:
    assert len(COMMANDS) >= 20
    assert any(c.startswith("python3 -m drivers.usrp_server") for c in COMMANDS)
    stage = [c for c in COMMANDS if c.startswith("testbed stage ")]
    assert {c.split()[2] for c in stage} >= {"status", "home", "move", "stop"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses(command: str) -> None:
    parser, argv = _argv(command)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(
                f"README command {command!r} does not parse: {err.getvalue().strip()} (exit {exc.code})"
            )


def test_a_wrong_option_is_caught() -> None:
    """The check itself can fail: the README's old radio server line."""
    old = 'python3 -m drivers.usrp_server --args "type=b200" --bind tcp://0.0.0.0:5600 --keys keys/'
    parser, argv = _argv(old)
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert "unrecognized arguments: --keys" in err.getvalue()
