"""One move gate for every path that moves a stage: `testbed run` (move_with_detours) and the
campaign raster (a formation over the StageArray) refuse an unsafe move before any byte is sent,
and what they do send keeps the clearance along the whole path. (bluesky: test_stage_bluesky.py;
`testbed stage move`: test_stage_cli.py; the radio servers' TX gain cap: test_radio_server.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from drivers.errors import StageLimitError
from drivers.serial_stage import SerialStage
from drivers.stage_array import point_segment_distance
from testbed.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FAST = [f"lab.stages.ma{i}.sim_time_scale=400" for i in range(4)]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[float, float]]]:
    """Every move a driver is asked to make: (stage name, stage-frame target)."""
    calls: list[tuple[str, tuple[float, float]]] = []
    real = SerialStage.move_to

    def spy(self, xy, speed=None):  # noqa: ANN001, ANN202
        calls.append((self.name, (float(xy[0]), float(xy[1]))))
        return real(self, xy, speed)

    monkeypatch.setattr(SerialStage, "move_to", spy)
    return calls


def replay_one_at_a_time(array, sent, start, d_m: float) -> None:
    """Replay legs sent one at a time: each keeps ``d_m`` from every standing antenna."""
    here = dict(start)
    for name, xy_stage in sent:
        target = array.to_region(name, xy_stage)
        for other, p in here.items():
            if other != name:
                gap = point_segment_distance(p, here[name], target)
                assert gap >= d_m - 1e-6, (name, other, gap)
        here[name] = target


def test_run_path_refuses_unsafe_targets_and_routes_crossings_with_clearance(sent) -> None:
    from testbed.lab import move_with_detours
    from testbed.stages import open_stages

    config = load_config(CONFIGS / "dryrun.yaml", FAST)
    d_m = config.lab.array.min_spacing_m
    stages = open_stages(config)
    try:
        start = stages.positions()
        names = stages.names
        # Two targets 10 mm apart, and one outside its stage's travel: refused, nothing sent.
        near = [(0.0, 0.0), (0.01, 0.0), (0.1, 0.1), (-0.1, 0.1)]
        with pytest.raises(StageLimitError, match="spacing limit: targets put ma0 at .* 10.00 mm apart"):
            move_with_detours(stages, near, 30.0)
        outside = [(0.0, 0.0), (0.6, 0.0), (0.1, 0.1), (-0.1, 0.1)]
        with pytest.raises(StageLimitError, match="ma1 .*travel limit"):
            move_with_detours(stages, outside, 30.0)
        assert sent == []
        # ma0's straight path to the far corner runs through ma1: no order of straight moves is
        # safe, so the run path goes around (an L-shaped detour). Replay what the drivers got.
        before = [(-0.15, -0.1), (0.0, 0.0), (-0.2, 0.2), (0.2, -0.2)]
        after = [(0.15, 0.1), (0.0, 0.0), (-0.2, 0.2), (0.2, -0.2)]
        move_with_detours(stages, before, 60.0)
        sent.clear()
        here = stages.positions()
        move_with_detours(stages, after, 60.0)
        assert [name for name, _ in sent] == ["ma0", "ma0"]  # two legs of one antenna
        replay_one_at_a_time(stages, sent, here, d_m)
        reached = stages.positions()
        for name, xy in zip(names, after, strict=True):
            assert reached[name] == pytest.approx(xy, abs=1e-6)
        assert start  # homed first
    finally:
        stages.close()


def test_campaign_raster_passes_the_same_gate(sent) -> None:
    """The campaign's formation moves through the StageArray: a formation step that would put two
    antennas together is refused before a byte, through the public campaign API."""
    from testbed.campaign import open_formation, plan_from_config

    config = load_config(CONFIGS / "campaign.yaml", FAST)
    plan = plan_from_config(config)
    formation = open_formation(config)
    try:
        first = plan.step_positions_m(0)
        bad = first.copy()
        bad[1] = bad[0] + np.array([0.02, 0.0])  # ma1 20 mm from ma0
        with pytest.raises(StageLimitError, match="spacing limit: targets put ma0 at .* 20.00 mm apart"):
            formation.move(bad)
        assert sent == []
        # From the homed corners below the region the formation routes up, one antenna at a time.
        start = formation.array.positions()
        reached = formation.move(first)
        assert np.allclose(reached, first, atol=1e-6) and len(sent) > 4
        replay_one_at_a_time(formation.array, sent, start, config.lab.array.min_spacing_m)
        # The raster's next step is a rigid shift of the formation: one simultaneous move.
        sent.clear()
        reached = formation.move(plan.step_positions_m(1))
        assert np.allclose(reached, plan.step_positions_m(1), atol=1e-6) and len(sent) == 4
        gaps = [math.dist(a, b) for i, a in enumerate(reached) for b in reached[i + 1 :]]
        assert min(gaps) >= config.lab.array.min_spacing_m
    finally:
        formation.close()
