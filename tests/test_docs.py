"""The user guide: its generated reference pages say what the code says, the paper page takes
bench_paper's files as they are, the README stays short and links into the guide, nothing cites
the old MODEL.md, and the strict build fails on a broken link."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))
import hooks  # noqa: E402  (docs/hooks.py: the MkDocs hook that generates the reference)

from testbed import cli  # noqa: E402
from testbed.campaign.common import TABLE_COLUMNS  # noqa: E402
from testbed.config import TestbedConfig  # noqa: E402


def _leaf_paths(model: type, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    paths = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths += _leaf_paths(ann, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths


def test_the_config_reference_has_every_field_with_type_default_limits_and_description() -> None:
    page = hooks.config_page()
    for path in _leaf_paths(TestbedConfig):
        assert f"| `{path}` |" in page, path
    # One row read in full: the stage's travel (a float with both limits and a description).
    row = next(line for line in page.splitlines() if line.startswith("| `lab.stages.<name>.travel_m` |"))
    assert (
        row
        == "| `lab.stages.<name>.travel_m` | float | `0.5` | <= 5.0, > 0, finite | usable travel along X and Y |"
    )
    assert "one of `sim`, `grbl`, `zaber`" in page and "| bool or `auto` |" in page
    # Every field says what it is: in its model's description (or an example config's comment).
    undescribed = [line for line in page.splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert not undescribed, undescribed
    assert "| `lab.stages` | map of name to StageSection | `ma0`, `ma1`, `ma2`, `ma3` |" in page


def test_the_cli_reference_has_every_command_and_option() -> None:
    page = hooks.cli_page()
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(cli.COMMANDS)
    for name, child in sub.choices.items():
        section = page.split(f"## testbed {name} ", 1)[1].split("\n## ", 1)[0]
        for action in child._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in section, (name, option)
    assert "### `python -m sim.serial_url`" in page and "### `python -m drivers.usrp_server`" in page


def test_the_records_reference_has_the_formats_from_the_code() -> None:
    page = hooks.records_page()
    assert ", ".join(f"`{c}`" for c in TABLE_COLUMNS) in page
    for key in ["final_val_ppl", "first_val_loss", "median_time_breakdown_s", "ma_gain_over_fpa_db"]:
        assert f"\n{key}\n" in page, key
    for live in ["``phase``", "``nodes``", "``stage``", "``budget``", "``stop_request``"]:
        assert live in page, live
    assert "done.json" in page and "spatial:element_geometry" in page


def test_the_paper_page_shows_bench_papers_files_or_says_how_to_make_them(tmp_path: Path) -> None:
    assert "`make paper`" in hooks.paper_results(tmp_path / "missing")
    (tmp_path / "figure.png").write_bytes(b"\x89PNG")
    (tmp_path / "table.md").write_text("| K | change |\n|---|---|\n| 1 | -3.2% |\n")
    (tmp_path / "paper.json").write_text('{"wall_s": 812.5}')
    shown = hooks.paper_results(tmp_path)
    assert "![figure](paper/figure.png)" in shown
    assert "| 1 | -3.2% |" in shown and '{"wall_s": 812.5}' in shown
    assert "make paper" not in shown
    # A table that embeds its own figure, relative to docs/paper/: pointed into paper/, shown once.
    (tmp_path / "table.md").write_text("![K panels](figure.png)\n\n| K | change |\n|---|---|\n")
    shown = hooks.paper_results(tmp_path)
    assert shown.count("paper/figure.png") == 1 and "![K panels](paper/figure.png)" in shown


def test_the_readme_is_short_and_its_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 120
    head = text.split("\n## ", 1)[0]
    assert "make demo" in head and "make test" in head and "source .venv/bin/activate" in text
    links = re.findall(r"\]\(([^)#]+)", text)
    assert links
    for link in links:
        assert (ROOT / link).exists(), link


def test_nothing_cites_model_md_any_more() -> None:
    """The model is the guide's explanation pages; MODEL.md is not in the repository."""
    cited = []
    for path in ROOT.rglob("*"):
        if path.suffix not in {".py", ".md", ".yaml"} or {".venv", "site", "runs", ".git"} & set(path.parts):
            continue
        if path == Path(__file__):
            continue
        if "MODEL.md" in path.read_text(encoding="utf-8", errors="replace"):
            cited.append(str(path.relative_to(ROOT)))
    assert not cited


def _mkdocs() -> list[str]:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs and mkdocs-material are not installed (pip install -e '.[docs]')")
    return [sys.executable, "-m", "mkdocs", "build", "--strict"]


def _build(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [*_mkdocs(), "--site-dir", str(tree / "site")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.slow
def test_the_guide_builds_strict_and_a_broken_link_fails_it(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "docs", tree / "docs", ignore=shutil.ignore_patterns("paper"))
    shutil.copy(ROOT / "mkdocs.yml", tree)
    good = _build(tree)
    assert good.returncode == 0, good.stderr[-3000:]
    config = (tree / "site" / "reference" / "config" / "index.html").read_text()
    assert "lab.stages.&lt;name&gt;.travel_m" in config
    page = tree / "docs" / "tutorials" / "compare.md"
    page.write_text(page.read_text() + "\nSee [the bound](../explanation/no-such-page.md).\n")
    bad = _build(tree)
    assert bad.returncode != 0
    assert "no-such-page.md" in bad.stderr
