"""Hardware truth, round 2 (issue 18, Zaber points 13-18): the driver and the emulator
against Zaber's ASCII protocol, end to end through a pyserial URL."""

from __future__ import annotations

import time

import pytest
from stage_kit import WAIT_S, homed_zaber_stage, make_rig, zaber_rig  # noqa: F401 - the two fixtures
from test_stage_transcripts import ScriptedPort

from drivers.errors import StageAlarm, StageCommandError, StageError
from drivers.zaber import ChecksumError, MoveInterrupted, ZaberChain, lrc, parse_reply


def _ask(device, line: str) -> str:
    device.write(line.encode() + b"\n")
    return device.read(200, timeout_s=1.0).decode().strip()


def _sent_since(device, mark: int) -> list[str]:
    """The command texts (no address, axis, id or checksum) the device received after ``mark``."""
    texts = []
    for raw in device.lines_received[mark:]:
        words = raw.strip().lstrip("/").split(":")[0].split()
        n = 0
        while n < min(3, len(words)) and words[n].isdigit():
            n += 1
        texts.append(" ".join(words[n:]))
    return texts


# --- point 13: AGAIN is sent again -------------------------------------------------------------
def test_point13_emulator_can_answer_again():
    r = make_rig("zaber", scale=50.0)
    try:
        r.device.again_replies = 1
        assert _ask(r.device, "/1 0 get pos") == "@01 0 RJ IDLE WR AGAIN"  # not executed
        assert _ask(r.device, "/1 0 get pos").startswith("@01 0 OK IDLE WR ")
    finally:
        r.close()


def test_point13_driver_retries_again_with_a_bounded_backoff(rig, stage):
    rig.device.again_replies = 3
    mark = len(rig.device.lines_received)
    stage.move_to((0.01, 0.02)).wait(WAIT_S)  # the first three commands of the move hear AGAIN
    assert rig.device.again_replies == 0
    sent = _sent_since(rig.device, mark)
    assert sent[:4] == ["get pos"] * 4  # the same command, four times, then on
    assert stage.position() == pytest.approx((0.01, 0.02), abs=2e-6)
    rig.device.again_replies = 10_000  # a device that never gets to it: the retries end
    t0 = time.monotonic()
    with pytest.raises(StageCommandError, match=r"RJ AGAIN .*still, after \d+ tries") as info:
        stage.position()
    assert info.value.code == "AGAIN" and time.monotonic() - t0 < stage.command_timeout_s + 1.0


# --- point 14: resolution and limit.min at start-up ------------------------------------------------
def test_point14_a_device_at_another_resolution_is_refused_naming_both(rig):
    assert _ask(rig.device, "/1 0 get limit.max") == "@01 0 OK IDLE WR 10498688 10498688"
    assert _ask(rig.device, "/1 0 set resolution 128") == "@01 0 OK IDLE WR 0"
    assert _ask(rig.device, "/1 0 get limit.max") == "@01 0 OK IDLE WR 20997376 20997376"  # same travel
    with pytest.raises(StageError, match=r"resolution is 128 .*resolution=64"):
        rig.open()


def test_point14_a_travel_that_starts_above_zero_is_refused(rig):
    assert _ask(rig.device, "/1 1 set limit.min 1000") == "@01 1 OK IDLE WR 0"
    with pytest.raises(StageError, match=r"X axis' limit.min=1000 microsteps is above 0"):
        rig.open()


# --- point 15: a fault found while idle fails the move before anything is sent -------------------
def test_point15_fault_while_idle_is_named_before_any_move_is_sent(rig, stage):
    rig.device.inject_fault("FZ", axis=2)
    mark = len(rig.device.lines_received)
    with pytest.raises(
        StageAlarm, match=r"FZ \(peripheral inactive\) found while idle, before the move"
    ) as info:
        stage.move_to((0.1, 0.1)).wait(WAIT_S)
    assert info.value.code == "FZ"
    assert not any(t.startswith(("set ", "move ")) for t in _sent_since(rig.device, mark))


# --- point 16: the emulator rejects what the device rejects ----------------------------------------
@pytest.mark.parametrize(
    ("flag", "reason"), [("FD", "DRIVERDISABLED"), ("FO", "DRIVERDISABLED"), ("FZ", "INACTIVE")]
)
def test_point16_emulator_rejects_motion_with_the_driver_off(rig, flag, reason):
    rig.device.inject_fault(flag, axis=1)
    assert _ask(rig.device, "/1 1 move abs 1000") == f"@01 1 RJ IDLE {flag} {reason}"
    assert _ask(rig.device, "/1 1 home") == f"@01 1 RJ IDLE {flag} {reason}"
    assert _ask(rig.device, "/1 2 move abs 1000") == "@01 2 OK BUSY WR 0"  # the other axis still moves


def test_point16_no_reference_is_no_rejection(rig):
    """The reply reasons name nothing for WR: a device with no reference moves by its count."""
    assert _ask(rig.device, "/1 1 move abs 1000") == "@01 1 OK BUSY WR 0"


# --- point 18: NI is cleared before the next move ---------------------------------------------------
def test_point18_ni_left_by_an_interruption_is_cleared_before_the_next_move(rig, stage):
    status = stage.move_to((0.2, 0.1), speed_m_s=0.01)
    deadline = time.monotonic() + 2.0
    while not all(ax.move is not None for ax in rig.device.axes) and time.monotonic() < deadline:
        time.sleep(0.005)
    rig.device.write(b"/1 0 stop\n")  # someone else on the cable
    with pytest.raises(MoveInterrupted):
        status.wait(WAIT_S)
    mark = len(rig.device.lines_received)
    stage.move_to((0.05, 0.05)).wait(WAIT_S)
    sent = _sent_since(rig.device, mark)
    assert "warnings clear" in sent and sent.index("warnings clear") < next(
        i for i, t in enumerate(sent) if t.startswith("move abs")
    )


# --- point 17: the rest of the protocol ---------------------------------------------------------------
def test_point17_a_split_reply_is_joined_and_info_lines_are_checked():
    port = ScriptedPort([
        (b"/1 0 01 get pos\n", b"@01 0 01 OK IDLE -- 1 2 \\\r\n#01 0 01 cont 3 4\r\n"),
        (b"/1 0 02 get pos\n", b"#01 0 02 note:00\r\n@01 0 02 OK IDLE -- 5 6\r\n"),
    ])  # fmt: skip
    chain = ZaberChain(port)
    reply, garbage = chain.request(1, 0, "get pos", 0.5, "t", checksum=False)
    assert reply.data == "1 2 3 4" and garbage == []
    reply, garbage = chain.request(1, 0, "get pos", 0.5, "t", checksum=False)
    assert reply.data == "5 6" and garbage == ["#01 0 02 note:00"]  # :00 is not its checksum: noise
    port.check()


def test_point17_a_colon_in_the_data_is_data_and_dashes_are_no_message_id():
    reply = parse_reply("@01 0 05 OK IDLE -- key:value")
    assert reply.data == "key:value" and not reply.checksummed
    reply = parse_reply(f"@01 0 -- OK IDLE WR 2:{lrc('01 0 -- OK IDLE WR 2')}")
    assert (reply.message_id, reply.flag, reply.data, reply.checksummed) == (None, "OK", "2", True)
    with pytest.raises(ChecksumError):
        parse_reply("@01 0 05 OK IDLE -- 0:7F")


def test_point17_a_broadcast_collects_every_devices_reply():
    r = make_rig("zaber", scale=50.0, addresses=(1, 2, 3))
    try:
        chain = ZaberChain(r.url)
        replies, _ = chain.request_all(0, "get system.axiscount", 1.0, "t", checksum=False, expected=3)
        assert sorted((x.address, x.data) for x in replies) == [(1, "2"), (2, "2"), (3, "2")]
        replies, _ = chain.request_all(0, "get device.id", 0.2, "t", checksum=False)  # count unknown
        assert len(replies) == 3
        chain.link.close()
    finally:
        r.close()


def test_point17_emulator_serves_system_reset_renumber_axiscount_and_dash_ids():
    r = make_rig("zaber", scale=50.0, addresses=(5, 3))
    try:
        dev = r.device
        assert _ask(dev, "/5 0 -- get system.axiscount") == "@05 0 -- OK IDLE WR 2"
        assert _ask(dev, "/5 1 get system.axiscount") == "@05 1 RJ IDLE WR DEVICEONLY"
        dev.write(b"/0 renumber\n")
        time.sleep(0.05)
        got = dev.read(200, timeout_s=1.0).decode().split("\r\n")
        assert [g for g in got if g] == ["@01 0 OK IDLE WR 0", "@02 0 OK IDLE WR 0"]  # along the cable: 5, 3
        assert _ask(dev, "/1 0 home").startswith("@01 0 OK BUSY WR")
        time.sleep(0.5)
        assert _ask(dev, "/1 0 warnings") == "@01 0 OK IDLE -- 00"
        assert _ask(dev, "/1 0 system reset") == "@01 0 OK IDLE WR 0"  # as after power-up: no reference
    finally:
        r.close()
