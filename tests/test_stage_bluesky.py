"""bluesky: a stage's axes are Movable/Locatable/Readable/Stoppable; RunEngine runs a grid_scan."""

from __future__ import annotations

import math
import time

import pytest
from stage_kit import WAIT_S, make_rig

bluesky = pytest.importorskip("bluesky")
from bluesky import RunEngine  # noqa: E402
from bluesky.plans import grid_scan  # noqa: E402
from bluesky.protocols import Locatable, Movable, Readable, Status, Stoppable  # noqa: E402

from drivers.stage_array import StageAxis  # noqa: E402


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


def test_axis_satisfies_protocols(stage):
    x = StageAxis(stage, 0, origin_m=-0.25)
    for proto in (Movable, Locatable, Readable, Stoppable):
        assert isinstance(x, proto)
    status = x.set(-0.2)
    assert isinstance(status, Status)
    status.wait(WAIT_S)
    assert x.locate() == {"setpoint": -0.2, "readback": pytest.approx(-0.2)}
    assert x.read()[x.name]["value"] == pytest.approx(-0.2)
    assert x.describe()[x.name]["units"] == "m"
    with pytest.raises(ValueError, match="axis must be"):
        StageAxis(stage, 2)


def test_grid_scan_with_run_engine(stage):
    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    x, y = StageAxis(stage, 0, name="ant_x"), StageAxis(stage, 1, name="ant_y")
    RE(grid_scan([FieldProbe(stage)], y, 0.0, 0.04, 3, x, 0.01, 0.03, 3, snake_axes=True))
    events = [doc["data"] for name, doc in docs if name == "event"]
    assert len(events) == 9
    visited = [(round(e["ant_x"], 6), round(e["ant_y"], 6)) for e in events]
    assert visited[:3] == [(0.01, 0.0), (0.02, 0.0), (0.03, 0.0)]
    assert visited[3:6] == [(0.03, 0.02), (0.02, 0.02), (0.01, 0.02)]  # snake
    for e in events:
        assert e["probe"] == pytest.approx(math.cos(40.0 * e["ant_x"]) + math.sin(30.0 * e["ant_y"]))
    stop_doc = next(doc for name, doc in docs if name == "stop")
    assert stop_doc["exit_status"] == "success"
