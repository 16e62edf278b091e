"""The Positioner contract: the same assertions on GrblStage and ZaberStage over their emulators.

Each stage talks to its emulator through a real pyserial URL (``grblsim://`` / ``zabersim://``).
"""

from __future__ import annotations

import math
import time

import pytest
from stage_kit import LIMITS, WAIT_S

from drivers.errors import StageAlarm, StageError, StageLimitError, StageNotHomed
from drivers.positioner import Positioner, StageState


@pytest.fixture  # ``rig``: each stage kind on its emulator (conftest.py)
def stage(rig):
    s = rig.open()
    yield s
    s.close()


def _near(a, b, tol=2e-6):
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_satisfies_protocol_and_starts_unhomed(stage):
    assert isinstance(stage, Positioner)
    assert stage.limits == LIMITS
    assert stage.state == StageState.ALARM  # power-up: position unknown until homed
    assert stage.homed is False
    with pytest.raises(StageNotHomed, match="home"):
        stage.move_to((0.1, 0.1))


def test_home_move_position(rig, stage):
    stage.home().wait(WAIT_S)
    assert stage.state == StageState.IDLE and stage.homed
    assert _near(stage.position(), (0.0, 0.0))
    status = stage.move_to((0.2, 0.05))
    status.wait(WAIT_S)
    assert status.success and stage.state == StageState.IDLE
    assert _near(stage.position(), (0.2, 0.05))
    stage.move_to((0.1234, 0.4321), speed_m_s=0.04).wait(WAIT_S)
    assert _near(stage.position(), (0.1234, 0.4321))


def test_move_takes_modelled_time(rig, stage):
    stage.home().wait(WAIT_S)
    t0 = time.monotonic()
    stage.move_to((0.3, 0.4)).wait(WAIT_S)
    wall_s = time.monotonic() - t0
    model_s = LIMITS.move_time_s(0.5)  # 10.1 s at 0.05 m/s
    # The emulator's clock runs SCALE x real time: the move cannot finish sooner than that.
    assert wall_s >= model_s / rig.device.clock.scale * 0.9


def test_stop_mid_move_keeps_position(rig, stage):
    stage.home().wait(WAIT_S)
    status = stage.move_to((0.4, 0.4), speed_m_s=0.005)  # ~113 s model, ~0.57 s real
    time.sleep(0.1)
    stage.stop()
    assert status.done and not status.success
    assert "stop" in str(status.exception())
    here = stage.position()
    assert 0.0 < here[0] < 0.4
    # On the straight line; Zaber's two axis commands start a moment apart (x200 on this clock).
    assert math.isclose(here[0], here[1], abs_tol=1e-6 if rig.kind == "grbl" else 3e-3)
    time.sleep(0.05)
    assert _near(stage.position(), here)  # it stays stopped
    assert stage.state == StageState.IDLE and stage.homed  # braked, not crashed: no re-homing needed
    stage.move_to((0.0, 0.1)).wait(WAIT_S)
    assert _near(stage.position(), (0.0, 0.1))


@pytest.mark.parametrize(
    ("target", "speed", "words"),
    [
        ((0.6, 0.1), None, "travel limit: X=0.6"),
        ((0.1, -0.01), None, "travel limit: Y=-0.01"),
        ((0.1, 0.1), 0.2, "speed limit: 0.2"),
        ((float("nan"), 0.1), None, "finite"),
    ],
)
def test_limits_refused_before_any_byte(rig, stage, target, speed, words):
    stage.home().wait(WAIT_S)
    before = list(rig.device.lines_received)
    with pytest.raises(StageLimitError, match=words.replace("(", r"\(").replace(".", r"\.")):
        stage.move_to(target, speed_m_s=speed)
    assert rig.device.lines_received == before  # nothing was sent
    assert stage.state == StageState.IDLE


def test_alarm_mid_move_then_recovery(rig, stage):
    stage.home().wait(WAIT_S)
    rig.device.faults.alarm_at = 0.5  # GRBL: hard limit ALARM:1; Zaber: stall FS
    status = stage.move_to((0.4, 0.2))
    with pytest.raises(StageAlarm) as info:
        status.wait(WAIT_S)
    assert info.value.code == (1 if rig.kind == "grbl" else "FS")
    assert stage.state == StageState.ALARM and not stage.homed
    before = list(rig.device.lines_received)
    with pytest.raises(StageNotHomed):
        stage.move_to((0.1, 0.1))
    assert rig.device.lines_received == before
    stage.home().wait(WAIT_S)
    assert stage.state == StageState.IDLE and stage.homed
    stage.move_to((0.1, 0.1)).wait(WAIT_S)
    assert _near(stage.position(), (0.1, 0.1))


def test_second_move_while_moving_is_refused(stage):
    stage.home().wait(WAIT_S)
    status = stage.move_to((0.4, 0.4), speed_m_s=0.005)
    try:
        with pytest.raises(StageError, match="still moving"):
            stage.move_to((0.1, 0.1))
    finally:
        stage.stop()
    assert status.done


def test_reopen_reaches_same_device(rig):
    s1 = rig.open()
    s1.home().wait(WAIT_S)
    s1.move_to((0.05, 0.07)).wait(WAIT_S)
    s1.close()
    s2 = rig.open()  # the driver holds DTR low as the port opens: an Arduino does not reset
    try:
        assert s2.homed and s2.state == StageState.IDLE
        assert getattr(s2, "reset_at_open", False) is False
        assert _near(s2.position(), (0.05, 0.07))
    finally:
        s2.close()
    if rig.kind != "grbl":
        return  # a Zaber controller keeps its reference across host connections, DTR or not
    # a port opened with DTR high (pyserial's default; an adapter that pulses DTR) resets GRBL
    import serial

    from drivers.grbl import GrblStage
    from sim.serial_url import install

    install()
    s2 = GrblStage(serial.serial_for_url(rig.url, timeout=0.05), LIMITS, name="again")
    try:
        assert s2.reset_at_open and not s2.homed and s2.state == StageState.ALARM
        assert _near(s2.to_machine_mm(s2.count_position()), (0.0, 0.0))  # machine 0: the count restarted
        t0 = time.monotonic()
        s2.home().wait(WAIT_S)  # homing travels back from where the carriage really is
        assert time.monotonic() - t0 >= LIMITS.move_time_s(0.086) / rig.device.clock.scale * 0.9
        s2.move_to((0.05, 0.07)).wait(WAIT_S)
        assert _near(s2.position(), (0.05, 0.07))
    finally:
        s2.close()
