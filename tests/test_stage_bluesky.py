"""bluesky: a stage's axes are Movable/Locatable/Readable/Stoppable; RunEngine runs a grid_scan;
every bluesky move passes the array's clearance gate."""

from __future__ import annotations

import math
import time

import pytest
from stage_kit import WAIT_S, make_rig

bluesky = pytest.importorskip("bluesky")
import bluesky.plan_stubs as bps  # noqa: E402
from bluesky import RunEngine  # noqa: E402
from bluesky.plans import grid_scan  # noqa: E402
from bluesky.protocols import Locatable, Movable, Readable, Status, Stoppable  # noqa: E402

from drivers.errors import StageLimitError  # noqa: E402
from drivers.positioner import wait_all  # noqa: E402
from drivers.stage_array import StageArray  # noqa: E402
from drivers.stage_axis import StageAxis  # noqa: E402

D = 0.0625  # lambda / 2 at 2.4 GHz


class FieldProbe:
    """A detector whose reading depends on where the antenna is (a stand-in for a power meter)."""

    name = "probe"
    parent = None

    def __init__(self, stage) -> None:
        self.stage = stage

    def read(self):
        x, y = self.stage.position()
        return {"probe": {"value": math.cos(40.0 * x) + math.sin(30.0 * y), "timestamp": time.time()}}

    def describe(self):
        return {"probe": {"source": "test", "dtype": "number", "shape": []}}


@pytest.fixture
def stage():
    rig = make_rig("grbl")
    s = rig.open()
    s.home().wait(WAIT_S)
    yield s
    s.close()
    rig.close()


@pytest.fixture
def one(stage):
    """The stage alone in an array whose region frame is its own frame shifted by -0.25 m in x."""
    return StageArray({stage.name: stage}, {stage.name: (-0.25, 0.0)}, 0.0)


@pytest.fixture
def pair():
    rigs = [make_rig("grbl") for _ in range(2)]
    stages = {f"ma{i}": r.open() for i, r in enumerate(rigs)}
    array = StageArray(stages, {"ma0": (0.0, 0.0), "ma1": (-0.1, 0.0)}, D)
    wait_all(array.home_all(), WAIT_S)
    yield array
    array.close()
    for r in rigs:
        r.close()


def test_axis_satisfies_protocols(one, stage):
    x = StageAxis(one, stage.name, 0)
    for proto in (Movable, Locatable, Readable, Stoppable):
        assert isinstance(x, proto)
    status = x.set(-0.2)
    assert isinstance(status, Status)
    status.wait(WAIT_S)
    assert x.locate() == {"setpoint": -0.2, "readback": pytest.approx(-0.2)}
    assert stage.position()[0] == pytest.approx(0.05)  # region -0.2 = stage 0.05
    assert x.read()[x.name]["value"] == pytest.approx(-0.2)
    assert x.describe()[x.name]["units"] == "m"
    assert "done, success" in repr(status)
    with pytest.raises(ValueError, match="axis must be"):
        StageAxis(one, stage.name, 2)
    with pytest.raises(ValueError, match="no stage 'nope'"):
        StageAxis(one, "nope", 0)
    with pytest.raises(TypeError, match="needs the StageArray"):
        StageAxis(stage, stage.name, 0)  # type: ignore[arg-type]  # a bare stage cannot see the others


def test_grid_scan_with_run_engine(one, stage):
    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    name = stage.name
    x, y = StageAxis(one, name, 0, name="ant_x"), StageAxis(one, name, 1, name="ant_y")
    RE(grid_scan([FieldProbe(stage)], y, 0.0, 0.04, 3, x, -0.24, -0.22, 3, snake_axes=True))
    events = [doc["data"] for name, doc in docs if name == "event"]
    assert len(events) == 9
    visited = [(round(e["ant_x"], 6), round(e["ant_y"], 6)) for e in events]
    assert visited[:3] == [(-0.24, 0.0), (-0.23, 0.0), (-0.22, 0.0)]
    assert visited[3:6] == [(-0.22, 0.02), (-0.23, 0.02), (-0.24, 0.02)]  # snake
    for e in events:
        sx = e["ant_x"] + 0.25  # the probe reads the stage frame
        assert e["probe"] == pytest.approx(math.cos(40.0 * sx) + math.sin(30.0 * e["ant_y"]))
    stop_doc = next(doc for name, doc in docs if name == "stop")
    assert stop_doc["exit_status"] == "success"


def test_bluesky_cannot_drive_one_antenna_onto_another(pair):
    """Two StageAxis objects and bps.mv: ma1 onto ma0's spot is refused before any byte moves it."""
    ma1 = pair.stages["ma1"]
    sent: list[tuple[float, float]] = []
    real_move_to = ma1.move_to
    ma1.move_to = lambda xy, speed=None: (sent.append(xy), real_move_to(xy, speed))[1]  # type: ignore[method-assign]
    x1, y1 = StageAxis(pair, "ma1", 0), StageAxis(pair, "ma1", 1)
    RE = RunEngine({})
    with pytest.raises(Exception) as info:  # bluesky's FailedStatus carries the status
        RE(bps.mv(x1, 0.0))  # ma0 stands at (0, 0); ma1 at (-0.1, 0)
    assert sent == []  # the gate refused it before the driver was asked
    text = str(info.value)
    assert "<MoveStatus 'ma1_x: set 0 m' FAILED: StageLimitError: spacing limit" in text
    assert "0.00 mm apart; the minimum spacing is 62.50 mm; nothing was sent" in text
    assert pair.positions()["ma1"] == pytest.approx((-0.1, 0.0))
    # The whole path counts, not just the end: from (-0.1, 0.03) to (0.1, 0.03) ends 104 mm from
    # ma0 but passes 30 mm above it.
    RE(bps.mv(y1, 0.03))
    assert len(sent) == 1
    with pytest.raises(StageLimitError, match="would pass 30.00 mm from ma0"):
        x1.set(0.1).wait(WAIT_S)
    assert len(sent) == 1
    assert pair.positions()["ma1"] == pytest.approx((-0.1, 0.03))
    RE(bps.mv(y1, 0.1))
    RE(bps.mv(x1, 0.1, y1, 0.12))  # both axes in one step: they take turns (safe in either order)
    assert len(sent) == 4 and pair.positions()["ma1"] == pytest.approx((0.1, 0.12))
