"""StageArray safety: travel, speed and spacing along the whole path, checked before any motion."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stage_kit import WAIT_S, make_rig

from drivers.errors import StageError, StageLimitError
from drivers.positioner import MoveStatus, StageState, wait_all
from drivers.stage_array import NoSafeOrder, StageArray, point_segment_distance, segment_distance
from drivers.stage_geometry import route_moves

D = 0.0625  # lambda / 2 at 2.4 GHz
ORIGINS = {"a": (0.0, 0.0), "b": (0.1, 0.0), "c": (0.3, 0.0)}  # homed corners, region frame


def test_geometry():
    assert point_segment_distance((0.5, 1.0), (0.0, 0.0), (1.0, 0.0)) == pytest.approx(1.0)
    assert point_segment_distance((2.0, 0.0), (0.0, 0.0), (1.0, 0.0)) == pytest.approx(1.0)
    assert point_segment_distance((1.0, 1.0), (0.0, 0.0), (0.0, 0.0)) == pytest.approx(2**0.5)
    assert segment_distance((0, 0), (1, 1), (0, 1), (1, 0)) == 0.0  # crossing
    assert segment_distance((0, 0), (1, 0), (0, 0.3), (1, 0.3)) == pytest.approx(0.3)  # parallel
    assert segment_distance((0, 0), (1, 0), (1, 0), (2, 0)) == 0.0  # touching end to end
    assert segment_distance((0, 0), (1, 0), (2, 1), (3, 5)) == pytest.approx(2**0.5)


coord = st.floats(-1.0, 1.0, allow_nan=False)
point = st.tuples(coord, coord)


@settings(max_examples=80, deadline=None)
@given(point, point, point, point)
def test_segment_distance_matches_dense_sampling(a0, a1, b0, b1):
    ts = np.linspace(0.0, 1.0, 201)
    pa = np.array(a0) + ts[:, None] * (np.array(a1) - np.array(a0))
    pb = np.array(b0) + ts[:, None] * (np.array(b1) - np.array(b0))
    sampled = np.min(np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=-1))
    exact = segment_distance(a0, a1, b0, b1)
    assert exact <= sampled + 1e-12  # never optimistic
    assert sampled - exact <= 0.02  # and tight (sampling step is 1/200 of segments up to 2.8 long)


@pytest.fixture
def rigs():
    rs = {n: make_rig("grbl") for n in ORIGINS}
    yield rs
    for r in rs.values():
        r.close()


@pytest.fixture
def array(rigs):
    stages = {n: r.open() for n, r in rigs.items()}
    arr = StageArray(stages, ORIGINS, D)
    wait_all(arr.home_all(), WAIT_S)
    yield arr
    arr.close()


def _sent(rigs):
    return {n: list(r.device.lines_received) for n, r in rigs.items()}


def test_home_all_and_positions_in_region_frame(array):
    assert array.positions() == {n: pytest.approx(o) for n, o in ORIGINS.items()}
    assert array.to_stage("b", (0.15, 0.2)) == pytest.approx((0.05, 0.2))


def test_parallel_moves_run_together(array):
    targets = {"a": (0.0, 0.2), "b": (0.1, 0.2), "c": (0.3, 0.2)}
    assert array.plan(targets) == [[("a", (0.0, 0.2)), ("b", (0.1, 0.2)), ("c", (0.3, 0.2))]]
    reached = array.goto(targets, timeout_s=WAIT_S)
    assert reached == {n: pytest.approx(xy) for n, xy in targets.items()}


def test_blocked_path_is_sequenced(array, rigs):
    # a wants to go through b's spot; b moves out of the way first, then a goes.
    targets = {"a": (0.2, 0.0), "b": (0.1, 0.2)}
    assert array.plan(targets) == [[("b", (0.1, 0.2))], [("a", (0.2, 0.0))]]
    statuses = array.move_all(targets)
    wait_all(statuses, WAIT_S)
    assert all(s.success for s in statuses)
    pos = array.positions()
    assert pos["a"] == pytest.approx((0.2, 0.0)) and pos["b"] == pytest.approx((0.1, 0.2))
    # b's move line reached its controller before a's: the batches ran in order.
    assert (
        rigs["a"].device.lines_received[-2].startswith("G21 G53 G1 X-201.000 Y-1.000")
    )  # GRBL machine frame


def test_refuse_policy_and_impossible_swap(array, rigs):
    before = _sent(rigs)
    strict = StageArray(array.stages, ORIGINS, D, policy="refuse")
    with pytest.raises(StageLimitError, match="policy='refuse'"):
        strict.plan({"a": (0.2, 0.0), "b": (0.1, 0.2)})
    assert _sent(rigs) == before  # nothing was sent
    wait_all(array.move_all({"a": (0.15, 0.1), "b": (0.15, 0.3)}), WAIT_S)
    before = _sent(rigs)
    # a and b swap places along the same line: no order of moves avoids a collision.
    with pytest.raises(StageLimitError, match=r"spacing limit: moving . from .* would pass 0.00 mm from"):
        array.move_all({"a": (0.15, 0.3), "b": (0.15, 0.1)})
    assert _sent(rigs) == before


@pytest.mark.parametrize(
    ("targets", "speed", "words"),
    [
        ({"a": (0.12, 0.3), "b": (0.16, 0.3)}, None, "spacing limit: targets put a at"),
        ({"c": (0.85, 0.1)}, None, "c .* travel limit: X=0.55"),
        ({"b": (0.05, 0.1)}, None, "b .* travel limit: X=-0.05"),
        ({"a": (0.1, 0.1)}, 0.5, "speed limit: 0.5"),
        ({"z": (0.1, 0.1)}, None, "unknown stage name"),
        ([(0.1, 0.1)], None, "got 1 positions for 3 stages"),
        ({"a": "xy"}, None, "must be an"),
    ],
)
def test_refusals_name_the_limit_and_send_nothing(array, rigs, targets, speed, words):
    before = _sent(rigs)
    with pytest.raises(StageLimitError, match=words):
        array.move_all(targets, speed)
    assert _sent(rigs) == before


def test_already_close_pair_may_only_separate(rigs):
    stages = {n: r.open() for n, r in rigs.items()}
    same = {"a": (0.0, 0.0), "b": (0.0, 0.0), "c": (0.3, 0.0)}  # a and b share a corner (a bad start)
    arr = StageArray(stages, same, D)
    try:
        wait_all(arr.home_all(), WAIT_S)
        arr.plan({"a": (0.1, 0.0), "b": (0.0, 0.1)})  # moving apart is allowed
        wait_all(arr.move_all({"a": (0.2, 0.0), "b": (0.0, 0.2)}), WAIT_S)
        with pytest.raises(StageLimitError, match="spacing limit"):
            arr.plan({"a": (0.05, 0.2)})  # now spaced: D applies again
    finally:
        arr.close()


def test_stop_all_mid_move(array):
    statuses = array.move_all({"a": (0.0, 0.4), "c": (0.3, 0.4)}, speed_m_s=0.005)
    time.sleep(0.05)
    array.stop_all()
    assert all(s.done for s in statuses)
    assert not statuses[0].success and statuses[1].success  # b had nothing to do
    pos = array.positions()
    assert 0 < pos["a"][1] < 0.4 and 0 < pos["c"][1] < 0.4
    assert all(s.state == StageState.IDLE for s in array.stages.values())
    array.move_all({"a": (0.0, 0.45)}, speed_m_s=0.005)
    with pytest.raises(StageError, match=r"still moving \(a\)"):
        array.move_all({"c": (0.3, 0.1)})  # c is idle, but a could be anywhere on its path
    array.stop_all()


def test_route_detours_one_antenna_when_no_straight_order_is_safe(array, rigs):
    """a's straight path from (0, 0.1) to (0.2, 0) passes 45 mm from b: refused as a straight
    move; routed, a goes x first along y = 0.1, then down, and its status finishes only then."""
    array.goto({"a": (0.0, 0.1)}, timeout_s=WAIT_S)
    before = _sent(rigs)
    with pytest.raises(NoSafeOrder, match="moving a from .* would pass 44.72 mm from b"):
        array.move_all({"a": (0.2, 0.0)})
    assert _sent(rigs) == before
    assert array.route({"a": (0.2, 0.0)}) == [[("a", (0.2, 0.1))], [("a", (0.2, 0.0))]]
    stage_a, legs = array.stages["a"], []
    real = stage_a.move_to

    def second_leg_waits(xy, speed=None):
        legs.append((xy, status_a.done))  # the array's status for a: not done before its last leg
        return real(xy, speed)

    stage_a.move_to = second_leg_waits
    status_a = MoveStatus("placeholder")
    statuses = array.move_all({"a": (0.2, 0.0)}, route=True)
    status_a = statuses[array.names.index("a")]
    wait_all(statuses, WAIT_S)
    assert status_a.success and array.positions()["a"] == pytest.approx((0.2, 0.0))
    assert [(pytest.approx(xy), done) for xy, done in legs] == [((0.2, 0.1), False), ((0.2, 0.0), False)]


def test_route_goes_around_where_no_l_shaped_detour_does(array, rigs):
    """Issue 18 point 25: a swap along one line has no straight order and no L-shaped detour (the
    gate used to refuse it, and the round ran where the antennas stood); routed on the grid, one
    antenna goes around the other, every leg keeping D from the standing antennas."""
    wait_all(array.move_all({"a": (0.15, 0.1), "b": (0.15, 0.3)}, route=True), WAIT_S)
    goal = {"a": (0.15, 0.3), "b": (0.15, 0.1)}
    legs = [leg for batch in array.route(goal) for leg in batch]
    where = dict(array.positions())
    for name, xy in legs:
        for other, p in where.items():
            if other != name:
                assert point_segment_distance(p, where[name], xy) >= D - 1e-9
        where[name] = xy
    assert where["a"] == pytest.approx(goal["a"]) and where["b"] == pytest.approx(goal["b"])
    wait_all(array.move_all(goal, route=True), WAIT_S)
    assert array.positions() == {**{n: pytest.approx(p) for n, p in ORIGINS.items()},
                                 **{n: pytest.approx(p) for n, p in goal.items()}}  # fmt: skip


def test_route_moves_finds_none_in_a_corridor_swap():
    """Two antennas confined to one line (a zero-width travel box) cannot pass each other."""
    box = ((0.0, 0.0), (0.5, 0.0))
    start, goal = {"a": (0.1, 0.0), "b": (0.3, 0.0)}, {"a": (0.3, 0.0), "b": (0.1, 0.0)}
    assert route_moves(start, goal, D, {"a": box, "b": box}) is None
    wide = ((0.0, 0.0), (0.5, 0.3))
    legs = route_moves(start, goal, D, {"a": wide, "b": wide})
    assert legs is not None and legs[-1][1] in (goal["a"], goal["b"])


def test_move_status_repr_says_why_it_failed():
    running = MoveStatus("ma1_x: set 0 m")
    assert repr(running) == "<MoveStatus 'ma1_x: set 0 m' running>"
    running.set_exception(StageLimitError("spacing limit: 0.00 mm apart"))
    assert (
        repr(running) == "<MoveStatus 'ma1_x: set 0 m' FAILED: StageLimitError: spacing limit: 0.00 mm apart>"
    )
    assert repr(MoveStatus.finished("home")) == "<MoveStatus 'home' done, success>"


def test_homing_goes_one_at_a_time_in_an_order_that_keeps_the_clearance(rigs):
    """Issue 18 point 19: with positions unknown, a homing stage may sweep its whole travel
    square, so it homes alone, before the stages whose origins lie in that square come to stand
    there (a, b, c here: a's travel covers b's and c's origins, b's covers c's); never two at once."""
    stages = {n: r.open() for n, r in rigs.items()}
    arr = StageArray(stages, ORIGINS, D)
    try:
        assert arr.homing_order() == [["a"], ["b"], ["c"]]
        spans: dict[str, list[float]] = {}
        for n, stage in stages.items():
            real = stage.home

            def spy(n=n, real=real):
                spans[n] = [time.monotonic()]
                status = real()
                status.add_callback(lambda _s, n=n: spans[n].append(time.monotonic()))
                return status

            stage.home = spy  # type: ignore[method-assign]
        wait_all(arr.home_all(), WAIT_S)
        assert spans["a"][1] <= spans["b"][0] and spans["b"][1] <= spans["c"][0]
        assert arr.positions() == {n: pytest.approx(o) for n, o in ORIGINS.items()}
    finally:
        arr.close()


def test_homing_through_a_standing_antenna_is_refused_before_any_byte(array, rigs):
    """A stage of known position homes along the box between it and its origin: an antenna
    standing in that box refuses the homing, naming it, and no $H is sent."""
    wait_all(array.move_all({"a": (0.2, 0.2)}), WAIT_S)
    wait_all(array.move_all({"b": (0.1, 0.1)}), WAIT_S)
    before = _sent(rigs)
    with pytest.raises(
        StageLimitError, match=r"homing: no order keeps the clearance: a's way home .* from b"
    ):
        array.home_all(["a"])
    assert _sent(rigs) == before
    wait_all(array.home_all(["c"]), WAIT_S)  # c's way home is clear
    assert array.positions()["c"] == pytest.approx(ORIGINS["c"])
