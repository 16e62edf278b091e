"""Hardware truth, round 2 (issue 18, points 1-12): what GRBL 1.1h does on the wire, run.

Emulator points are transcripts of the exact bytes in their order, each chunk with the model time
it goes out (``GrblDevice.take_output``), so a delay is checked in model seconds against the
firmware's (report.c: 500 ms after every ALARM line), not against a wall clock. Driver points run
``GrblStage`` on the emulator or on a scripted transcript.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from test_stage_transcripts import BANNER, UNLOCK_MSG, scripted_grbl

from drivers.errors import StageAborted, StageAlarm, StageCommandError, StageNotHomed, StageTimeout
from drivers.grbl import GrblStage
from drivers.positioner import StageLimits, StageState
from sim.grbl_device import GrblDevice
from sim.serial_url import register, unregister

GRBL_BANNER = b"\r\nGrbl 1.1h ['$' for help]\r\n"
UNLOCK = b"[MSG:'$H'|'$X' to unlock]\r\n"
# report.c report_alarm_message: delay_ms(500) after the line; the issue allows 50 ms either way
ALARM_DELAY_S = 0.5
TOL_S = 0.05


# --- emulator transcripts -------------------------------------------------------------------------
def _device(**kw: object) -> GrblDevice:
    """An emulator past its power-up lines, unlocked ($X): Idle at machine 0 (soft limits [-$13x, 0]),
    with the carriage 400 mm from the switches (room for the moves below)."""
    kw.setdefault("time_scale", 100.0)
    kw.setdefault("start_mm", (400.0, 400.0))
    dev = GrblDevice(**kw)  # type: ignore[arg-type]
    dev.write(b"$X\n")
    dev.take_output()
    return dev


def _wait(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "the emulator never got there"
        time.sleep(0.002)


def _bytes(out: list[tuple[float, bytes]]) -> bytes:
    return b"".join(chunk for _, chunk in out)


def _at(out: list[tuple[float, bytes]], chunk: bytes) -> float:
    """Model time at which ``chunk`` (one line, CR LF included) goes out."""
    return next(t for t, c in out if c == chunk)


def _ask(dev: GrblDevice, data: bytes) -> bytes:
    dev.write(data)
    return _bytes(dev.take_output())


def test_point5_reset_mid_move_with_g4_pending_sends_ok_alarm3_then_banner_500ms_later():
    dev = _device()
    dev.write(b"G1 X-300 F600\n")  # 30 s of model time
    dev.write(b"G4 P0.01\n")  # held until the move ends
    _wait(lambda: dev.state_name == "Run")
    assert _bytes(dev.take_output()) == b"ok\r\n"
    dev.write(b"\x18")
    out = dev.take_output()
    assert _bytes(out) == b"ok\r\nALARM:3\r\n" + GRBL_BANNER + UNLOCK
    assert _at(out, b"ALARM:3\r\n") - _at(out, b"ok\r\n") == pytest.approx(0.0, abs=TOL_S)
    assert _at(out, b"\r\n") - _at(out, b"ALARM:3\r\n") == pytest.approx(ALARM_DELAY_S, abs=TOL_S)


def test_point6_reset_within_500ms_of_alarm2_is_ignored():
    dev = _device(time_scale=10.0)  # the 500 ms are 50 ms of wall time: the reset below lands in them
    dev.write(b"G53 G0 X5\n")  # beyond the soft limits [-$130, 0]
    dev.write(b"\x18")  # protocol.c clears a reset that came during the alarm's delay
    out = dev.take_output()
    assert _bytes(out) == b"ALARM:2\r\n[MSG:Reset to continue]\r\n"  # no banner: the reset was dropped
    _wait(lambda: dev.clock.now() > _at(out, b"[MSG:Reset to continue]\r\n"))
    assert _ask(dev, b"\x18") == b"ok\r\n" + GRBL_BANNER + UNLOCK  # now it resets


def test_point7_reset_to_continue_500ms_after_alarm2_and_the_rejected_line_answers_ok():
    dev = _device(time_scale=10.0)
    dev.write(b"G53 G0 X5\n")
    out = dev.take_output()
    assert _bytes(out) == b"ALARM:2\r\n[MSG:Reset to continue]\r\n"
    msg_t = _at(out, b"[MSG:Reset to continue]\r\n")
    assert msg_t - _at(out, b"ALARM:2\r\n") == pytest.approx(ALARM_DELAY_S, abs=TOL_S)
    _wait(lambda: dev.clock.now() > msg_t)
    # the line the soft limit stopped returns once reset: its ok, then the banner (ok\r\n\r\nGrbl...)
    assert _ask(dev, b"\x18") == b"ok\r\n" + GRBL_BANNER + UNLOCK


def test_point8_feed_hold_at_the_end_of_a_block_answers_the_g4_in_hold0():
    dev = _device(time_scale=10.0)
    dev.write(b"G1 X-1 F600\n")
    dev.write(b"G4 P2\n")  # the move ends, then GRBL dwells 2 s (0.2 s of wall time)
    _wait(lambda: dev.position_mm[0] == -1.0)
    assert _ask(dev, b"!") == b"ok\r\n"  # the G1's ok; the hold itself says nothing
    assert _ask(dev, b"?").startswith(b"<Hold:0|")
    got = b""
    deadline = time.monotonic() + 5.0
    while b"ok\r\n" not in got and time.monotonic() < deadline:
        got += _bytes(dev.take_output())
        time.sleep(0.005)
    assert got == b"ok\r\n"  # the G4's ok, while held
    assert _ask(dev, b"?").startswith(b"<Hold:0|")
    dev.write(b"~")
    assert _ask(dev, b"?").startswith(b"<Idle|")  # nothing left to resume


def test_point9_a_stock_build_reports_no_line_numbers():
    for line_numbers, want in ((False, False), (True, True)):
        dev = _device(**({"line_numbers": True} if line_numbers else {}))
        assert (b"[OPT:VN," in _ask(dev, b"$I\n")) == want  # USE_LINE_NUMBERS shows as N
        dev.write(b"N7 G1 X-300 F600\n")
        _wait(lambda dev=dev: dev.state_name == "Run")
        assert (b"|Ln:7|" in _ask(dev, b"?")) == want


def test_point10_report_inches_13():
    dev = _device()
    assert _ask(dev, b"$13=1\n") == b"ok\r\n"
    assert _ask(dev, b"G10 L2 P1 X-25.4\n") == b"ok\r\n"  # G21: mm in, whatever $13 says
    dev.write(b"G53 G0 X-50.8\n")
    _wait(lambda: dev.state_name == "Idle" and dev.position_mm[0] == -50.8)
    dev.take_output()
    report = _ask(dev, b"?")
    assert report.startswith(b"<Idle|MPos:-2.0000,0.0000,0.0000|FS:0.0,0|")
    assert b"|WCO:-1.0000,0.0000,0.0000" in report
    assert b"[G54:-1.0000,0.0000,0.0000]\r\n" in _ask(dev, b"$#\n")
    assert _ask(dev, b"$13=0\n") == b"ok\r\n"
    assert _ask(dev, b"?").startswith(b"<Idle|MPos:-50.800,0.000,0.000|FS:0,0")


def test_point11_sleep_says_ok_then_sleeping_and_a_reset_wakes_it_in_alarm():
    dev = _device()
    assert _ask(dev, b"$SLP\n") == b"ok\r\n[MSG:Sleeping]\r\n"
    assert _ask(dev, b"?").startswith(b"<Sleep|")
    assert _ask(dev, b"G0 X-1\n") == b""  # asleep: lines wait, unanswered, until a reset
    assert _ask(dev, b"\x18") == GRBL_BANNER + UNLOCK
    assert _ask(dev, b"?").startswith(b"<Alarm|")


@pytest.mark.parametrize(
    ("fault", "code", "mpos"),
    [
        # ALARM:9: Z (cycle 0) homed at -$27; X and Y searched 1.5 x max($130, $131) = 75 mm
        ("dead_switches", 9, b"MPos:75.000,75.000,-1.000"),
        # ALARM:8: Z homed; X and Y zeroed at the pull-off's start and pulled off $27
        ("stuck_switches", 8, b"MPos:-1.000,-1.000,-1.000"),
    ],
)
def test_point12_homing_failure_leaves_the_count_where_limits_c_does(fault, code, mpos):
    dev = GrblDevice(time_scale=200.0, travel_mm=(49.0, 49.0), hard_limits=False)  # $130 = $131 = 50
    dev.take_output()
    getattr(dev, fault).update("XY")
    dev.write(b"$H\n")
    got: list[tuple[float, bytes]] = []
    deadline = time.monotonic() + 5.0
    while UNLOCK not in _bytes(got) and time.monotonic() < deadline:
        got += dev.take_output()
        time.sleep(0.002)
    assert _bytes(got) == f"ALARM:{code}\r\nok\r\n".encode() + GRBL_BANNER + UNLOCK
    assert _at(got, b"ok\r\n") - _at(got, f"ALARM:{code}\r\n".encode()) == pytest.approx(
        ALARM_DELAY_S, abs=TOL_S
    )
    assert _ask(dev, b"?").startswith(b"<Alarm|" + mpos + b"|")


# --- the driver -------------------------------------------------------------------------------------
SMALL = StageLimits(travel_m=(0.02, 0.02), max_speed_m_s=0.05, accel_m_s2=0.5)


def _stage_on(dev: GrblDevice, limits: StageLimits = SMALL, **kw: object) -> Iterator[GrblStage]:
    key = f"truth-{uuid.uuid4().hex[:8]}"
    url = register("grblsim", key, dev)
    stage = GrblStage(url, limits, name=key, command_timeout_s=0.5, homing_timeout_s=5.0, **kw)  # type: ignore[arg-type]
    try:
        yield stage
    finally:
        stage.close()
        unregister("grblsim", key)


@pytest.fixture
def stage_on():
    made: list[Iterator[GrblStage]] = []

    def make(dev: GrblDevice, **kw: object) -> GrblStage:
        gen = _stage_on(dev, **kw)
        made.append(gen)
        return next(gen)

    yield make
    for gen in made:
        gen.close()


@pytest.mark.parametrize("how", ["unlock", "stop"])
def test_point1_reset_after_alarm2_waits_for_reset_to_continue(stage_on, how):
    dev = GrblDevice(time_scale=10.0, travel_mm=(20.0, 20.0))  # the alarm's 500 ms: 50 ms of wall time
    stage = stage_on(dev)
    stage.unlock()  # $X: Idle at machine 0
    with pytest.raises(StageAlarm) as info:
        stage.command("G53 G0 X5")  # beyond the soft limits: ALARM:2
    assert info.value.code == 2
    getattr(stage, how)()  # a reset sent at once would be dropped; this one waits for the message
    if how == "unlock":
        assert stage.state == StageState.IDLE and stage.alarm_code is None
    else:  # reset: GRBL comes back in Alarm, position kept ([MSG:'$H'|'$X' to unlock])
        assert stage.state == StageState.ALARM
    assert stage.count_position() == pytest.approx((-0.001, -0.001))  # ALARM:2 keeps the position


def test_point1_no_banner_after_a_reset_resends_it_once_then_names_what_it_saw():
    alarm = [(b"G53 G0 X5\n", b"ALARM:2\r\n[MSG:Reset to continue]\r\n")]
    resent = [(b"\x18", b""), (b"\x18", BANNER + UNLOCK_MSG), (b"$X\n", b"[MSG:Caution: Unlocked]\r\nok\r\n"),
              (b"?", b"<Idle|MPos:0.000,0.000,0.000|FS:0,0>\r\n")]  # fmt: skip
    with scripted_grbl(alarm + resent) as (_, stage):
        with pytest.raises(StageAlarm):
            stage.command("G53 G0 X5")
        stage.unlock()  # the first reset got no banner: the second did
        assert stage.state == StageState.IDLE
    with scripted_grbl(alarm + [(b"\x18", b""), (b"\x18", b"")]) as (_, stage):
        with pytest.raises(StageAlarm):
            stage.command("G53 G0 X5")
        with pytest.raises(StageTimeout) as info:
            stage.unlock()
    message = str(info.value)
    assert "'[MSG:Reset to continue]'" in message and "115200" not in message  # what it saw, not a guess


def test_point2_without_homing_switches_only_the_operators_word_establishes_the_position(stage_on):
    dev = GrblDevice(time_scale=200.0, homing=False, soft_limits=False)
    stage = stage_on(dev, limits=StageLimits(travel_m=(0.5, 0.5), max_speed_m_s=0.05, accel_m_s2=0.5))
    assert stage.state == StageState.IDLE and not stage.homed  # GRBL counts from where it woke up
    with pytest.raises(StageNotHomed, match="accept_position"):
        stage.position()
    with pytest.raises(StageNotHomed, match="accept_position"):
        stage.move_to((0.01, 0.01))
    with pytest.raises(StageCommandError, match=r"\$22=0.*accept_position") as info:
        stage.home().wait(2.0)
    assert info.value.code == 5
    with pytest.raises(ValueError, match="note"):
        stage.accept_position(" ")
    assert stage.accept_position("carriage placed at the stage origin") == (0.0, 0.0)
    assert "carriage placed at the stage origin" in (stage.position_basis or "")
    stage.move_to((0.01, 0.02)).wait(5.0)
    # an abort mid-move may lose steps: the count is trusted again only on the operator's word
    status = stage.move_to((0.4, 0.4))
    stage.soft_reset()
    with pytest.raises((StageAborted, StageAlarm)):
        status.wait(5.0)
    assert not stage.homed and stage.position_basis is None
    stage.unlock()
    with pytest.raises(StageNotHomed, match="accept_position"):
        stage.move_to((0.01, 0.01))
    stage.accept_position("checked the carriage against the ruler after the abort")
    stage.move_to((0.01, 0.01)).wait(5.0)
    assert stage.position() == pytest.approx((0.01, 0.01), abs=1e-5)


def test_point2_with_homing_switches_accept_position_is_refused(stage_on):
    stage = stage_on(GrblDevice(time_scale=200.0, travel_mm=(20.0, 20.0)))
    with pytest.raises(StageCommandError, match=r"home\(\) establishes"):
        stage.accept_position("trust me")


def test_point3_position_while_not_homed_says_it_is_not_a_position(stage_on):
    stage = stage_on(GrblDevice(time_scale=200.0, travel_mm=(20.0, 20.0)))
    assert stage.state == StageState.ALARM and not stage.homed
    with pytest.raises(StageNotHomed, match=r"position unknown.*home\(\) first"):
        stage.position()
    assert stage.count_position() == pytest.approx((-0.001, -0.001))  # machine 0 is $27 from stage 0
    stage.home().wait(5.0)
    assert stage.position() == pytest.approx((0.0, 0.0)) and stage.position_basis == "homed ($H)"


def test_point4_a_feed_hold_with_no_resume_ends_as_held(stage_on):
    dev = GrblDevice(time_scale=2.0, travel_mm=(20.0, 20.0))
    stage = stage_on(dev)
    stage.command("$24=600")  # a quick locate phase keeps the homing short
    stage.home().wait(5.0)
    status = stage.move_to((0.015, 0.0))  # 0.4 s of model time
    _wait(lambda: dev.state_name == "Run")
    stage.feed_hold()
    with pytest.raises(StageAborted, match=r"held.*Hold:0.*resume\(\)"):
        status.wait(10.0)
