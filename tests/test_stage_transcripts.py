"""Transcript tests: the exact bytes each driver sends, and every reply form it must understand.

``ScriptedPort`` plays a transcript the way PyMeasure's ``expected_protocol`` does: each write
must equal the next expected bytes, and the paired reply then becomes readable.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator

import pytest

from drivers.errors import StageAlarm, StageCommandError, StageError, StageLimitError, StageTimeout
from drivers.grbl import (
    ALARMS_LOSING_POSITION,
    GRBL_ALARMS,
    GRBL_ERRORS,
    GrblStage,
    GrblStatus,
    parse_setting,
    parse_status,
)
from drivers.positioner import StageLimits, StageState
from drivers.zaber import ZaberStage, parse_reply

LIMITS = StageLimits(travel_m=(0.5, 0.5), max_speed_m_s=0.05, accel_m_s2=0.5)
BANNER = b"\r\nGrbl 1.1h ['$' for help]\r\n"
UNLOCK_MSG = b"[MSG:'$H'|'$X' to unlock]\r\n"
SETTINGS = (
    b"$0=10\r\n$1=25\r\n$10=1\r\n$13=0\r\n$20=1\r\n$21=1\r\n$22=1\r\n$23=0\r\n$24=25.000\r\n$25=500.000\r\n"
    b"$27=1.000\r\n$110=3000.000\r\n$111=3000.000\r\n$120=500.000\r\n$121=500.000\r\n$130=501.000\r\n"
    b"$131=501.000\r\nok\r\n"
)
BUILD_INFO = b"[VER:1.1h.20190830:]\r\n[OPT:V,15,128]\r\nok\r\n"
# Stock GRBL after $H: pull-off 1 mm from the switches at the positive ends (machine 0); stage 0 is here.
HOMED_IDLE = b"<Idle|MPos:-1.000,-1.000,-1.000|FS:0,0>\r\n"


class ScriptedPort:
    """A pyserial stand-in that plays a transcript of (expected write, reply) pairs."""

    portstr = "transcript://test"

    def __init__(self, script: list[tuple[bytes, bytes]], greeting: bytes = b"") -> None:
        self.script: deque[tuple[bytes, bytes]] = deque(script)
        self.errors: list[str] = []
        self.sent: list[bytes] = []
        self._in = bytearray(greeting)
        self._cond = threading.Condition()

    def expect(self, sent: bytes, reply: bytes) -> None:
        with self._cond:
            self.script.append((sent, reply))

    def write(self, data: bytes) -> int:
        with self._cond:
            self.sent.append(bytes(data))
            if not self.script:
                self.errors.append(f"unexpected write {bytes(data)!r}")
                return len(data)
            want, reply = self.script.popleft()
            if bytes(data) != want:
                self.errors.append(f"sent {bytes(data)!r}, transcript expects {want!r}")
            self._in += reply
            self._cond.notify_all()
            return len(data)

    def read(self, size: int = 1) -> bytes:
        with self._cond:
            if not self._in:
                self._cond.wait(0.02)
            out = bytes(self._in[:size])
            del self._in[:size]
            return out

    @property
    def in_waiting(self) -> int:
        return len(self._in)

    def flush(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        with self._cond:
            self._in.clear()

    def close(self) -> None:
        pass

    def check(self) -> None:
        assert not self.errors, self.errors
        assert not self.script, f"transcript not played to the end: {list(self.script)}"


# --- GRBL status reports ------------------------------------------------------------------------
FULL = "<Idle|MPos:1.000,2.000,3.000|Bf:15,128|Ln:99|FS:500,8000|Pn:XYZPDHRS|WCO:0.500,0.000,-1.000|Ov:100,90,110|A:SFM>"


def test_status_report_every_field():
    s = parse_status(FULL)
    assert s == GrblStatus(
        state="Idle", substate=None, mpos_mm=(1.0, 2.0, 3.0), wco_mm=(0.5, 0.0, -1.0), buffer=(15, 128),
        line_number=99, feed_mm_min=500.0, spindle_rpm=8000.0, pins="XYZPDHRS", overrides=(100, 90, 110),
        accessories="SFM",
    )  # fmt: skip


def test_status_report_fields_in_any_order():
    head, *fields = FULL[1:-1].split("|")
    shuffled = "<" + "|".join([head, *reversed(fields)]) + ">"
    assert parse_status(shuffled) == parse_status(FULL)


@pytest.mark.parametrize(
    ("line", "state", "sub", "check"),
    [
        ("<Hold:0|MPos:5.000,6.000,0.000|FS:0,0>", "Hold", 0, lambda s: s.mpos_mm == (5.0, 6.0, 0.0)),
        ("<Hold:1|WPos:1.000,1.000,0.000|F:250>", "Hold", 1, lambda s: s.feed_mm_min == 250.0),
        ("<Door:2|MPos:0.000,0.000,0.000|FS:0,0|Pn:D>", "Door", 2, lambda s: s.pins == "D"),
        ("<Alarm|MPos:0.000,0.000,0.000|FS:0,0>", "Alarm", None, lambda s: s.buffer is None),
        ("<Home|MPos:-3.000,0.000,0.000|FS:500,0>", "Home", None, lambda s: s.mpos_mm[0] == -3.0),
        ("<Jog|MPos:0,0,0|FS:600,0|Ov:100,100,100>", "Jog", None, lambda s: s.overrides == (100, 100, 100)),
        ("<Run|MPos:1,1,1|FS:1,0|Xyz:7>", "Run", None, lambda s: s.extra == {"Xyz": "7"}),
    ],
)
def test_status_report_forms(line, state, sub, check):
    s = parse_status(line)
    assert (s.state, s.substate) == (state, sub)
    assert check(s)


def test_wpos_plus_wco_gives_machine_position():
    s = parse_status("<Idle|WPos:9.000,8.000,0.000|FS:0,0>")
    assert s.machine_pos_mm(None) is None
    assert s.machine_pos_mm((1.0, 2.0, 0.0)) == (10.0, 10.0, 0.0)
    assert parse_status("<Idle|WPos:9.000,8.000,0.000|WCO:1.000,1.000,0.000>").machine_pos_mm(None) == (
        10,
        9,
        0,
    )


@pytest.mark.parametrize(
    "bad",
    ["Idle|MPos:0,0,0", "<Bogus|MPos:0,0,0>", "<Idle|MPos:1,x,0>", "<Idle|FS:5>", "<Idle|MPos>", "<Idle|FS:0,0>",
     "<Idle|MPos:nan,0,0>", "<Idle|MPos:0,0,0|Ov:1,2>"],
)  # fmt: skip
def test_malformed_status_reports_raise(bad):
    with pytest.raises(ValueError):
        parse_status(bad)


def test_settings_lines():
    assert parse_setting("$110=3000.000") == (110, 3000.0)
    assert parse_setting("$22=1") == (22, 1.0)
    assert parse_setting("$N0=") is None and parse_setting("ok") is None


def test_error_and_alarm_tables_are_grbls():
    assert sorted(GRBL_ERRORS) == [*range(1, 18), *range(20, 39)]
    assert sorted(GRBL_ALARMS) == list(range(1, 10))
    assert GRBL_ERRORS[9][0] == "G-code lock" and GRBL_ALARMS[1][0] == "Hard limit"


# --- GRBL driver transcripts ----------------------------------------------------------------------
@contextlib.contextmanager
def scripted_grbl(
    extra: list[tuple[bytes, bytes]] | None = None, greeting: bytes = BANNER + UNLOCK_MSG
) -> Iterator[tuple[ScriptedPort, GrblStage]]:
    """A ``GrblStage`` opened on a transcript (start-up exchange first, then ``extra``); on leaving,
    the stage is closed and the transcript must have been played to the end with nothing else sent."""
    port, stage = _open_grbl(extra, greeting)
    try:
        yield port, stage
    finally:
        stage.close()
    port.check()


def _open_grbl(extra: list[tuple[bytes, bytes]] | None = None, greeting: bytes = BANNER + UNLOCK_MSG):
    port = ScriptedPort(
        [
            (b"$$\n", SETTINGS),
            (b"$I\n", BUILD_INFO),
            (b"?", b"<Alarm|MPos:0.000,0.000,0.000|FS:0,0|WCO:0.000,0.000,0.000>\r\n"),
        ]
        + (extra or []),
        greeting=greeting,
    )
    stage = GrblStage(port, LIMITS, name="t", command_timeout_s=0.5, boot_timeout_s=0.3)
    return port, stage


def test_grbl_startup_banner_settings_state():
    port, stage = _open_grbl()
    try:
        assert stage.banner == "Grbl 1.1h ['$' for help]"
        assert stage.settings[110] == 3000.0 and stage.settings[22] == 1.0
        assert stage.state == StageState.ALARM and not stage.homed
        port.check()
    finally:
        stage.close()


def test_grbl_without_banner_sends_soft_reset():
    port, stage = None, None
    port = ScriptedPort(
        [
            (b"\x18", BANNER + UNLOCK_MSG),
            (b"$$\n", SETTINGS),
            (b"$I\n", BUILD_INFO),
            (b"?", b"<Alarm|MPos:0.000,0.000,0.000|FS:0,0>\r\n"),
        ]
    )
    stage = GrblStage(port, LIMITS, name="t", command_timeout_s=0.5, boot_timeout_s=0.05)
    try:
        assert stage.banner is not None
        port.check()
    finally:
        stage.close()


HOME = [(b"$H\n", b"ok\r\n"), (b"?", HOMED_IDLE)]
AT = b"<Idle|MPos:-101.000,-101.000,0.000|FS:0,0>\r\n"
GRBL_COMMANDS = {
    # Stage (0.1, 0.05) m from home = machine (-101, -51) mm in stock GRBL, sent with G53; done once
    # G4's ok and a final Idle status at the target are in.
    "move": (
        lambda s: s.move_to((0.1, 0.05)).wait(2.0),
        [
            (b"G21 G53 G1 X-101.000 Y-51.000 F3000.0\n", b"ok\r\n"),
            (b"G4 P0.01\n", b"ok\r\n"),
            (b"?", b"<Idle|MPos:-101.000,-51.000,-1.000|FS:0,0>\r\n"),
        ],
    ),
    "move slow to the far corner": (
        lambda s: s.move_to((1e-6, 0.499999), speed_m_s=0.01).wait(2.0),
        [
            (b"G21 G53 G1 X-1.001 Y-500.999 F600.0\n", b"ok\r\n"),
            (b"G4 P0.01\n", b"ok\r\n"),
            (b"?", b"<Idle|MPos:-1.001,-500.999,-1.000|FS:0,0>\r\n"),
        ],
    ),
    "position from WPos + WCO": (
        lambda s: s.position(),
        [(b"?", b"<Idle|WPos:-111.000,-61.000,0.000|Bf:15,128|FS:0,0|WCO:10.000,10.000,0.000>\r\n")],
        pytest.approx((0.1, 0.05)),
    ),
    "stop: hold, Hold:0, reset, read": (
        lambda s: s.stop(),
        [
            (b"!", b""),
            (b"?", b"<Hold:0|MPos:-1.001,-500.999,0.000|FS:0,0>\r\n"),
            (b"\x18", BANNER),
            (b"?", b"<Idle|MPos:-1.001,-500.999,0.000|FS:0,0>\r\n"),
        ],
    ),
    "unlock": (lambda s: s.unlock(), [(b"$X\n", b"[MSG:Caution: Unlocked]\r\nok\r\n"), (b"?", AT)]),
    "jog (stage +X is machine -X)": (
        lambda s: s.jog((0.01, -0.0), 0.01),
        [(b"?", AT), (b"$J=G91 G21 X-10.000 Y0.000 F600.0\n", b"ok\r\n")],
    ),
    "jog cancel": (lambda s: s.jog_cancel(), [(b"\x85", b"")]),
    "feed hold": (lambda s: s.feed_hold(), [(b"!", b"")]),
    "resume": (lambda s: s.resume(), [(b"~", b"")]),
    "command returns the info lines": (
        lambda s: s.command("$I"),
        [(b"$I\n", b"[VER:1.1h.20190830:]\r\n[OPT:V,15,128]\r\nok\r\n")],
        ["[VER:1.1h.20190830:]", "[OPT:V,15,128]"],
    ),
}


@pytest.mark.parametrize("what", list(GRBL_COMMANDS))
def test_grbl_command_bytes(what):
    """After homing, one driver call sends exactly these bytes and returns ``expected`` (default None)."""
    action, pairs, *expected = GRBL_COMMANDS[what]
    with scripted_grbl(HOME + pairs) as (_, stage):
        stage.home().wait(2.0)
        assert action(stage) == (expected[0] if expected else None)


def test_grbl_refused_move_sends_nothing():
    port, stage = _open_grbl([(b"$H\n", b"ok\r\n"), (b"?", HOMED_IDLE)])
    try:
        stage.home().wait(2.0)
        sent = list(port.sent)
        with pytest.raises(StageLimitError, match="travel limit: X=0.51"):
            stage.move_to((0.51, 0.0))
        assert port.sent == sent
        port.check()
    finally:
        stage.close()


def test_grbl_every_error_code():
    port, stage = _open_grbl()
    try:
        for code, (short, meaning) in GRBL_ERRORS.items():
            port.expect(b"G0 X1\n", f"error:{code}\r\n".encode())
            with pytest.raises(StageCommandError) as info:
                stage.command("G0 X1")
            assert info.value.code == code
            assert f"error:{code} ({short}: {meaning})" in str(info.value)
            assert "'G0 X1'" in str(info.value) and "transcript://test" in str(info.value)
        port.check()
    finally:
        stage.close()


def test_grbl_every_alarm_code():
    port, stage = _open_grbl([(b"$H\n", b"ok\r\n"), (b"?", HOMED_IDLE)])
    try:
        stage.home().wait(2.0)
        for code, (short, meaning) in GRBL_ALARMS.items():
            stage.homed = True
            port.expect(b"G0 X1\n", f"ALARM:{code}\r\n".encode())
            with pytest.raises(StageAlarm) as info:
                stage.command("G0 X1")
            assert info.value.code == code
            assert f"ALARM:{code} ({short}: {meaning})" in str(info.value)
            assert stage.state == StageState.ALARM and stage.alarm_code == code
            assert stage.homed is (code not in ALARMS_LOSING_POSITION)
        port.check()
    finally:
        stage.close()


def test_grbl_settings_checked_against_config():
    slow = SETTINGS.replace(b"$110=3000.000", b"$110=1000.000")
    port = ScriptedPort(
        [(b"$$\n", slow), (b"$I\n", BUILD_INFO), (b"?", b"<Idle|MPos:0.000,0.000,0.000|FS:0,0>\r\n")],
        greeting=BANNER,
    )
    with pytest.raises(StageError, match=r"max_speed_m_s=0.05 exceeds the firmware's X max rate \$110=1000"):
        GrblStage(port, LIMITS, name="t", command_timeout_s=0.5)
    short = SETTINGS.replace(b"$131=501.000", b"$131=300.000")
    port = ScriptedPort(
        [(b"$$\n", short), (b"$I\n", BUILD_INFO), (b"?", b"<Idle|MPos:0.000,0.000,0.000|FS:0,0>\r\n")],
        greeting=BANNER,
    )
    with pytest.raises(
        StageError, match=r"travel_m=0.5 m exceeds the firmware's Y travel from home, \$131=300"
    ):
        GrblStage(port, LIMITS, name="t", command_timeout_s=0.5)


# --- Zaber -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "fields"),
    [
        ("@01 0 OK IDLE -- 0", (1, 0, None, "OK", "IDLE", "--", "0")),
        ("@01 1 12 OK BUSY -- 0", (1, 1, 12, "OK", "BUSY", "--", "0")),
        ("@02 0 07 OK IDLE WR 629921 839895", (2, 0, 7, "OK", "IDLE", "WR", "629921 839895")),
        ("@01 2 RJ IDLE -- BADDATA", (1, 2, None, "RJ", "IDLE", "--", "BADDATA")),
        ("@01 0 03 OK IDLE FS 02 FS WR", (1, 0, 3, "OK", "IDLE", "FS", "02 FS WR")),
        ("@01 0 OK IDLE -- 0:8A", (1, 0, None, "OK", "IDLE", "--", "0")),
    ],
)
def test_zaber_reply_forms(line, fields):
    r = parse_reply(line)
    assert (r.address, r.axis, r.message_id, r.flag, r.status, r.warning, r.data) == fields


@pytest.mark.parametrize(
    "bad", ["!01 1 IDLE --", "#01 0 hello", "@01 0 YES IDLE -- 0", "@x 0 OK IDLE -- 0", "@01"]
)
def test_zaber_malformed_replies_raise(bad):
    with pytest.raises(ValueError):
        parse_reply(bad)


def _open_zaber():
    port = ScriptedPort([
        (b"/1 0 01 get device.id\n", b"@01 0 01 OK IDLE WR 30222\r\n"),
        (b"/1 0 02 get version\n", b"@01 0 02 OK IDLE WR 7.38\r\n"),
        (b"/1 0 03 get limit.max\n", b"@01 0 03 OK IDLE WR 10498688 10498688\r\n"),
        (b"/1 0 04 warnings\n", b"@01 0 04 OK IDLE WR 01 WR\r\n"),
    ])  # fmt: skip
    return port, ZaberStage(port, LIMITS, name="z", command_timeout_s=0.5, poll_s=0.001)


def test_zaber_command_bytes():
    port, stage = _open_zaber()
    try:
        assert stage.state == StageState.ALARM and not stage.homed  # WR: no reference yet
        port.expect(b"/1 0 05 home\n", b"@01 0 05 OK BUSY WR 0\r\n")
        port.expect(b"/1 0 06\n", b"!01 1 BUSY --\r\n#01 0 06 homing\r\n@01 0 06 OK BUSY WR 0\r\n")
        port.expect(b"/1 0 07\n", b"@01 0 07 OK IDLE -- 0\r\n")
        port.expect(b"/1 0 08 warnings\n", b"@01 0 08 OK IDLE -- 00\r\n")
        stage.home().wait(2.0)
        assert stage.homed and stage.state == StageState.IDLE
        port.expect(b"/1 0 09 get pos\n", b"@01 0 09 OK IDLE -- 0 0\r\n")
        port.expect(b"/1 1 10 set maxspeed 1032063\n", b"@01 1 10 OK IDLE -- 0\r\n")
        port.expect(b"/1 1 11 set accel 1032\n", b"@01 1 11 OK IDLE -- 0\r\n")
        port.expect(b"/1 2 12 set maxspeed 1376084\n", b"@01 2 12 OK IDLE -- 0\r\n")
        port.expect(b"/1 2 13 set accel 1376\n", b"@01 2 13 OK IDLE -- 0\r\n")
        port.expect(b"/1 1 14 move abs 629921\n", b"@01 1 14 OK BUSY -- 0\r\n")
        port.expect(b"/1 2 15 move abs 839895\n", b"@01 2 15 OK BUSY -- 0\r\n")
        port.expect(b"/1 0 16\n", b"@01 0 16 OK IDLE -- 0\r\n")
        stage.move_to((0.03, 0.04)).wait(2.0)  # speeds split 3:4 so both axes end together
        port.expect(b"/1 0 17 get pos\n", b"@01 0 16 OK IDLE -- 1 1\r\n@01 0 17 OK IDLE -- 629921 839895\r\n")
        assert stage.position() == pytest.approx((0.03, 0.04), abs=1e-7)  # the stale id-16 reply is skipped
        port.expect(b"/1 0 18 stop\n", b"@01 0 18 OK IDLE -- 0\r\n")
        port.expect(b"/1 0 19\n", b"@01 0 19 OK IDLE -- 0\r\n")
        stage.stop()
        port.check()
    finally:
        stage.close()


def test_zaber_rejection_and_stall():
    port, stage = _open_zaber()
    try:
        port.expect(b"/1 1 05 move abs 99999999\n", b"@01 1 05 RJ IDLE -- BADDATA\r\n")
        with pytest.raises(StageCommandError, match=r"RJ BADDATA \(a value is out of range") as info:
            stage.command(1, "move abs 99999999")
        assert info.value.code == "BADDATA"
        port.expect(b"/1 0 06\n", b"@01 0 06 OK IDLE FS 0\r\n")
        stage.command(0, "")
        assert stage.state == StageState.ALARM and stage.alarm_flag == "FS" and not stage.homed
        port.check()
    finally:
        stage.close()


def test_grbl_silent_controller_times_out_naming_port_and_command():
    port, stage = _open_grbl([(b"$H\n", b"ok\r\n"), (b"?", HOMED_IDLE)])
    try:
        stage.home().wait(2.0)
        port.expect(b"G21 G53 G1 X-11.000 Y-1.000 F3000.0\n", b"ok\r\n")
        port.expect(b"G4 P0.01\n", b"")  # the controller falls silent: no ok, no status reports
        for _ in range(20):
            port.expect(b"?", b"")
        status = stage.move_to((0.01, 0.0))
        with pytest.raises(StageTimeout) as info:
            status.wait(10.0)
        message = str(info.value)
        assert "transcript://test" in message and "no status report within 0.5 s" in message
        assert "'G4 P0.01'" in message
        assert stage.state == StageState.UNKNOWN  # it could not be brought back in step
        assert port.sent[3:7] == [b"$H\n", b"?", b"G21 G53 G1 X-11.000 Y-1.000 F3000.0\n", b"G4 P0.01\n"]
        assert set(port.sent[7:]) <= {b"?", b"!", b"\x18"}  # polls, then the recovery's hold and reset
    finally:
        stage.close()
