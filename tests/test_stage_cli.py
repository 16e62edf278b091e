"""`testbed stage status|home|move X Y|stop` on sim stages (GRBL emulators behind the driver)."""

from __future__ import annotations

import json

import pytest

from testbed.cli import main

CONFIG = """
lab:
  array: {allow_overlapping_travel: true}
  stages:
    ma0: {sim_time_scale: 400, origin_m: [-0.25, -0.25]}
    ma1: {sim_time_scale: 400, origin_m: [0.0, -0.25], home_on_start: true}
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(CONFIG)
    return str(path)


def _json_rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_status_does_not_home(config, capsys):
    assert main(["stage", "status", "--config", config, "--json"]) == 0
    rows = _json_rows(capsys.readouterr().out)
    assert [r["stage"] for r in rows] == ["ma0", "ma1"]
    assert all(r["state"] == "alarm" and r["homed"] is False for r in rows)
    # unhomed GRBL: its count is no position (issue 18 point 3); the row says so and what to do
    assert all(r["region_m"] is None and "home() first" in r["position_unknown"] for r in rows)


def test_home_one_stage(config, capsys):
    assert main(["stage", "home", "--config", config, "--stage", "ma1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ma1 ") and "idle" in out and "homed=true" in out and "ma0" not in out


def test_move_in_region_and_stage_frames(config, capsys):
    assert main(["stage", "move", "0.1", "0.05", "--stage", "ma1", "--config", config, "--json"]) == 0
    (row,) = _json_rows(capsys.readouterr().out)
    assert row["region_m"] == [0.1, 0.05] and row["stage_m"] == [0.1, 0.3] and row["state"] == "idle"
    assert main(["stage", "move", "0.2", "0.1", "--frame", "stage", "--stage", "ma0", "--config", config,
                 "--json"]) == 0  # fmt: skip
    (row,) = _json_rows(capsys.readouterr().out)
    assert row["stage_m"] == [0.2, 0.1] and row["region_m"] == [-0.05, -0.15]


def test_stop(config, capsys):
    assert main(["stage", "stop", "--config", config, "--stage", "ma0"]) == 0
    assert "ma0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["move", "0.1", "0.1"], "move needs --stage NAME"),
        (["move", "0.1", "--stage", "ma0"], "move needs X Y"),
        (["status", "0.1"], "status takes no coordinates"),
        (["status", "--stage", "nope"], "no such stage"),
        (["move", "0.9", "0.0", "--stage", "ma1"], "travel limit: X=0.9"),
        (["move", "0.1", "0.0", "--stage", "ma1", "--speed", "3"], "speed limit: 3"),
    ],
)
def test_bad_input_gives_clear_errors(config, capsys, argv, words):
    assert main(["stage", *argv, "--config", config]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (
            ("0.0", "-0.25"),
            "spacing limit: targets put ma0 at (0.0, -0.25) and ma1 at (0.0, -0.25), 0.00 mm apart",
        ),
        (("-0.03", "-0.24"), "and ma1 at (0.0, -0.25), 31.62 mm apart; the minimum spacing is 62.46 mm"),
    ],
)
def test_move_onto_another_antenna_is_refused_before_any_byte(config, capsys, monkeypatch, target, words):
    """`testbed stage move` passes the array's gate: ma0 onto or next to ma1 never reaches a
    driver."""
    from drivers.serial_stage import SerialStage

    sent = []
    real = SerialStage.move_to

    def spy(self, xy, speed=None):
        sent.append(xy)
        return real(self, xy, speed)

    monkeypatch.setattr(SerialStage, "move_to", spy)
    assert main(["stage", "move", *target, "--stage", "ma0", "--config", config]) == 2
    err = capsys.readouterr().err
    assert words in err and "nothing was sent" in err
    assert sent == []
    assert (
        main(["stage", "move", "-0.2", "0.1", "--stage", "ma0", "--config", config]) == 0
    )  # a clear one goes
    assert sent == [pytest.approx((0.05, 0.35))]


def test_move_through_another_antenna_goes_around_it(config, capsys, monkeypatch):
    """ma0 to (0.1, -0.25) ends 100 mm from ma1, but the straight path runs through it: the gate
    routes ma0 around (issue 18 point 25), every leg keeping the spacing from ma1."""
    import math

    from drivers.serial_stage import SerialStage
    from drivers.stage_geometry import point_segment_distance

    sent = []
    real = SerialStage.move_to

    def spy(self, xy, speed=None):
        sent.append((self.name, xy))
        return real(self, xy, speed)

    monkeypatch.setattr(SerialStage, "move_to", spy)
    assert main(["stage", "move", "0.1", "-0.25", "--stage", "ma0", "--config", config, "--json"]) == 0
    (row,) = _json_rows(capsys.readouterr().out)
    assert row["region_m"] == pytest.approx([0.1, -0.25])
    legs = [(x - 0.25, y - 0.25) for name, (x, y) in sent if name == "ma0"]  # region frame
    assert len(legs) >= 2 and all(name == "ma0" for name, _ in sent)
    from testbed.config import load_config

    spacing = load_config(config).lab.array.min_spacing_m
    here, ma1 = (-0.25, -0.25), (0.0, -0.25)
    for leg in legs:
        assert point_segment_distance(ma1, here, leg) >= spacing - 1e-9
        here = leg
    assert math.dist(here, (0.1, -0.25)) < 1e-9
