"""`testbed keys` and git (issue 18 point 26): secret keys must not be offered for a commit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.cli import main

ROOT = Path(__file__).resolve().parent.parent
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _repo(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


@needs_git
def test_the_projects_keys_folder_is_ignored():
    probe = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", "keys/node-0.key_secret"], check=False
    )
    assert probe.returncode == 0, "keys/ (the README's `testbed keys keys/`) is not in .gitignore"


@needs_git
def test_keys_in_an_unignored_work_tree_warn(tmp_path, capsys):
    repo = _repo(tmp_path / "repo")
    assert main(["keys", str(repo / "keys"), "--nodes", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "git does not ignore them" in err and str(repo) in err


@needs_git
def test_keys_that_git_ignores_or_outside_a_tree_do_not_warn(tmp_path, capsys):
    repo = _repo(tmp_path / "repo")
    (repo / ".gitignore").write_text("/keys/\n")
    assert main(["keys", str(repo / "keys"), "--nodes", "1"]) == 0
    assert main(["keys", str(tmp_path / "elsewhere"), "--nodes", "1"]) == 0
    assert "warning:" not in capsys.readouterr().err
