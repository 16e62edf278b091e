"""Every injected fault ends in a clear exception and a stage in a known state; nothing hangs."""

from __future__ import annotations

import time

import pytest
from stage_kit import WAIT_S

from drivers.errors import StageAlarm, StageError, StageNotHomed, StageTimeout
from drivers.positioner import StageState
from drivers.serial_link import StageLinkError


@pytest.fixture  # ``rig``: each stage kind on its emulator (conftest.py)
def stage(rig):
    s = rig.open()
    s.home().wait(WAIT_S)
    yield s
    s.close()


def _still_works(stage):
    """The link is back in step: a fresh move completes and lands where asked."""
    stage.move_to((0.02, 0.03)).wait(WAIT_S)
    x, y = stage.position()
    assert abs(x - 0.02) < 2e-6 and abs(y - 0.03) < 2e-6


def test_lost_reply(rig, stage):
    rig.device.faults.drop_replies = 1
    status = stage.move_to((0.1, 0.1))
    with pytest.raises(StageTimeout) as info:
        status.wait(WAIT_S)
    message = str(info.value)
    assert rig.url in message and "no reply to" in message  # names the port and the command
    assert stage.state == StageState.IDLE
    _still_works(stage)


def test_garbage_bytes(rig, stage):
    rig.device.faults.garbage = b"\x00\xfe#%\x7f"
    status = stage.move_to((0.1, 0.1))
    with pytest.raises(StageError, match="garbled reply") as info:
        status.wait(WAIT_S)
    assert rig.url in str(info.value)
    assert stage.state == StageState.IDLE
    _still_works(stage)


def test_slow_reply(rig, stage):
    rig.device.faults.slow_reply_s = 0.8  # longer than the 0.5 s command timeout
    rig.device.faults.slow_replies = 1
    status = stage.move_to((0.1, 0.1))
    with pytest.raises(StageTimeout, match="no reply to"):
        status.wait(WAIT_S)
    assert stage.state == StageState.IDLE
    time.sleep(0.9)  # the late reply arrives now: it must not be taken for a newer command's
    _still_works(stage)


def test_disconnect_mid_move(rig, stage):
    rig.device.faults.disconnect_at = 0.5
    status = stage.move_to((0.3, 0.3))
    with pytest.raises(StageLinkError, match="link lost|read failed|write failed"):
        status.wait(WAIT_S)
    assert stage.state == StageState.DISCONNECTED
    t0 = time.monotonic()
    with pytest.raises(StageLinkError, match="link lost"):
        stage.move_to((0.1, 0.1))
    assert time.monotonic() - t0 < 0.5  # refused at once, no waiting on a dead port
    stage.stop()  # a stop on a dead link is a no-op, never a hang
    # Plug back in: a new connection works (GRBL restarts, so it needs homing again).
    rig.device.power_cycle()
    again = rig.open()
    try:
        again.home().wait(WAIT_S)
        _still_works(again)
    finally:
        again.close()


def test_alarm_mid_move(rig, stage):
    rig.device.faults.alarm_at = 0.3
    status = stage.move_to((0.3, 0.1))
    with pytest.raises(StageAlarm) as info:
        status.wait(WAIT_S)
    if rig.kind == "grbl":
        assert info.value.code == 1 and "Hard limit" in str(info.value)
    else:
        assert info.value.code == "FS" and "stalled" in str(info.value)
    assert stage.state == StageState.ALARM and not stage.homed
    with pytest.raises(StageNotHomed):
        stage.move_to((0.1, 0.1))
    stage.home().wait(WAIT_S)
    _still_works(stage)


def test_homing_never_ends(rig):
    stage = rig.open(homing_timeout_s=0.3)
    try:
        rig.device.faults.homing_never_ends = True
        t0 = time.monotonic()
        with pytest.raises(StageTimeout, match=r"(did not finish|got no reply) within homing_timeout_s=0.3"):
            stage.home().wait(WAIT_S)
        assert time.monotonic() - t0 < 3.0
        assert stage.state == StageState.ALARM and not stage.homed
        with pytest.raises(StageNotHomed):
            stage.move_to((0.1, 0.1))
        stage.home().wait(WAIT_S)  # the fault is gone: homing works again
        assert stage.state == StageState.IDLE and stage.homed
    finally:
        stage.close()


def test_wait_has_a_timeout(stage):
    status = stage.move_to((0.4, 0.4), speed_m_s=0.002)  # ~280 s model, 1.4 s real
    try:
        with pytest.raises(StageTimeout, match="not finished after 0.05 s"):
            status.wait(0.05)
    finally:
        stage.stop()
