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

from drivers.errors import (
    StageAlarm,
    StageCommandError,
    StageError,
    StageLimitError,
    StageNotHomed,
    StageTimeout,
)
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
from drivers.zaber import FAULTS, ChecksumError, MoveInterrupted, ZaberStage, lrc, parse_alert, parse_reply

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
    """No banner on open (the board did not reset: DTR held low): '?' asks whether it runs, then a
    soft reset flushes what an earlier program left (it keeps the position), and the driver records
    that no reset happened on open."""
    port, stage = None, None
    port = ScriptedPort(
        [
            (b"?", b"<Alarm|MPos:0.000,0.000,0.000|FS:0,0>\r\n"),
            (b"\x18", BANNER + UNLOCK_MSG),
            (b"$$\n", SETTINGS),
            (b"$I\n", BUILD_INFO),
            (b"?", b"<Alarm|MPos:0.000,0.000,0.000|FS:0,0>\r\n"),
        ]
    )
    stage = GrblStage(port, LIMITS, name="t", command_timeout_s=0.5, boot_timeout_s=0.05)
    try:
        assert stage.banner is not None and stage.reset_at_open is False
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
def _zc(body: str) -> bytes:
    """A command as the driver sends it: ``/body:XX``, XX its LRC checksum."""
    return f"/{body}:{lrc(body)}\n".encode()


def _zr(body: str) -> bytes:
    """A reply as a device with ``comm.checksum 1`` sends it."""
    return f"@{body}:{lrc(body)}\r\n".encode()


@pytest.mark.parametrize(
    ("line", "fields"),
    [
        ("@01 0 OK IDLE -- 0", (1, 0, None, "OK", "IDLE", "--", "0")),
        ("@01 1 12 OK BUSY -- 0", (1, 1, 12, "OK", "BUSY", "--", "0")),
        ("@02 0 07 OK IDLE WR 629921 839895", (2, 0, 7, "OK", "IDLE", "WR", "629921 839895")),
        ("@01 2 RJ IDLE -- BADDATA", (1, 2, None, "RJ", "IDLE", "--", "BADDATA")),
        ("@01 0 03 OK IDLE FS 02 FS WR", (1, 0, 3, "OK", "IDLE", "FS", "02 FS WR")),
        ("@01 0 OK IDLE -- 0:8D", (1, 0, None, "OK", "IDLE", "--", "0")),
    ],
)
def test_zaber_reply_forms(line, fields):
    r = parse_reply(line)
    assert (r.address, r.axis, r.message_id, r.flag, r.status, r.warning, r.data) == fields
    assert r.checksummed is line.endswith(":8D")


@pytest.mark.parametrize(
    "bad", ["!01 1 IDLE --", "#01 0 hello", "@01 0 YES IDLE -- 0", "@x 0 OK IDLE -- 0", "@01"]
)
def test_zaber_malformed_replies_raise(bad):
    with pytest.raises(ValueError):
        parse_reply(bad)


def test_zaber_checksum_is_the_lrc():
    assert lrc("01 tools echo") == "8F"  # the zproto crate's own test vector (143)
    assert lrc("01 0 OK IDLE -- 0") == "8D"
    with pytest.raises(ChecksumError, match="expected :FE"):
        parse_reply("@01 1 05 OK IDLE -- 9:8D")  # the corrupted reply (9 was a 0)
    with pytest.raises(ChecksumError):
        parse_alert("!01 1 IDLE --:00")


def test_zaber_alert_forms():
    a = parse_alert("!01 1 IDLE --")
    assert (a.address, a.axis, a.status, a.warning, a.data, a.checksummed) == (1, 1, "IDLE", "--", "", False)
    a = parse_alert(f"!02 2 IDLE FD:{lrc('02 2 IDLE FD')}")
    assert (a.address, a.axis, a.warning, a.checksummed) == (2, 2, "FD", True)
    with pytest.raises(ValueError):
        parse_alert("!01 1 RESTING --")


def _open_zaber(**kw):
    port = ScriptedPort([
        (_zc("1 0 01 set comm.checksum 1"), _zr("01 0 01 OK IDLE WR 0")),
        (_zc("1 0 02 get device.id"), _zr("01 0 02 OK IDLE WR 30222")),
        (_zc("1 0 03 get version"), _zr("01 0 03 OK IDLE WR 7.38")),
        (_zc("1 0 04 get limit.max"), _zr("01 0 04 OK IDLE WR 10498688 10498688")),
        (_zc("1 0 05 get resolution"), _zr("01 0 05 OK IDLE WR 64 64")),
        (_zc("1 0 06 get limit.min"), _zr("01 0 06 OK IDLE WR 0 0")),
        (_zc("1 0 07 warnings"), _zr("01 0 07 OK IDLE WR 01 WR")),
    ])  # fmt: skip
    return port, ZaberStage(port, LIMITS, name="z", command_timeout_s=0.5, poll_s=0.001, **kw)


def _home_zaber(port, stage, first_id=8):
    i = first_id
    port.expect(_zc(f"1 0 {i:02d} home"), _zr(f"01 0 {i:02d} OK BUSY WR 0"))
    port.expect(_zc(f"1 0 {i + 1:02d}"), _zr(f"01 0 {i + 1:02d} OK IDLE -- 0"))
    port.expect(_zc(f"1 0 {i + 2:02d} warnings"), _zr(f"01 0 {i + 2:02d} OK IDLE -- 00"))
    stage.home().wait(2.0)
    assert stage.homed and stage.state == StageState.IDLE


def _start_move_zaber(port, i=11):
    """The bytes of ``move_to((0.2, 0.1))`` from (0, 0) up to the moves themselves; the next id."""
    port.expect(_zc(f"1 0 {i:02d} get pos"), _zr(f"01 0 {i:02d} OK IDLE -- 0 0"))
    port.expect(_zc(f"1 1 {i + 1:02d} set maxspeed 1538509"), _zr(f"01 1 {i + 1:02d} OK IDLE -- 0"))
    port.expect(_zc(f"1 1 {i + 2:02d} set accel 1539"), _zr(f"01 1 {i + 2:02d} OK IDLE -- 0"))
    port.expect(_zc(f"1 2 {i + 3:02d} set maxspeed 769254"), _zr(f"01 2 {i + 3:02d} OK IDLE -- 0"))
    port.expect(_zc(f"1 2 {i + 4:02d} set accel 769"), _zr(f"01 2 {i + 4:02d} OK IDLE -- 0"))
    port.expect(_zc(f"1 1 {i + 5:02d} move abs 4199475"), _zr(f"01 1 {i + 5:02d} OK BUSY -- 0"))
    port.expect(_zc(f"1 2 {i + 6:02d} move abs 2099738"), _zr(f"01 2 {i + 6:02d} OK BUSY -- 0"))
    return i + 7


def test_zaber_command_bytes():
    port, stage = _open_zaber()
    try:
        assert stage.state == StageState.ALARM and not stage.homed  # WR: no reference yet
        port.expect(_zc("1 0 08 home"), _zr("01 0 08 OK BUSY WR 0"))
        port.expect(_zc("1 0 09"), b"!01 1 BUSY --:" + lrc("01 1 BUSY --").encode() + b"\r\n#01 0 09 homing:" + lrc("01 0 09 homing").encode() + b"\r\n"
                    + _zr("01 0 09 OK BUSY WR 0"))  # fmt: skip
        port.expect(_zc("1 0 10"), _zr("01 0 10 OK IDLE -- 0"))
        port.expect(_zc("1 0 11 warnings"), _zr("01 0 11 OK IDLE -- 00"))
        stage.home().wait(2.0)
        assert stage.homed and stage.state == StageState.IDLE
        assert stage.last_alert is not None and stage.last_alert.status == "BUSY"
        port.expect(_zc("1 0 12 get pos"), _zr("01 0 12 OK IDLE -- 0 0"))
        port.expect(_zc("1 1 13 set maxspeed 1032063"), _zr("01 1 13 OK IDLE -- 0"))
        port.expect(_zc("1 1 14 set accel 1032"), _zr("01 1 14 OK IDLE -- 0"))
        port.expect(_zc("1 2 15 set maxspeed 1376084"), _zr("01 2 15 OK IDLE -- 0"))
        port.expect(_zc("1 2 16 set accel 1376"), _zr("01 2 16 OK IDLE -- 0"))
        port.expect(_zc("1 1 17 move abs 629921"), _zr("01 1 17 OK BUSY -- 0"))
        port.expect(_zc("1 2 18 move abs 839895"), _zr("01 2 18 OK BUSY -- 0"))
        port.expect(_zc("1 0 19"), _zr("01 0 19 OK IDLE -- 0"))
        port.expect(_zc("1 1 20 warnings"), _zr("01 1 20 OK IDLE -- 00"))  # each moved axis: no NI, no fault
        port.expect(_zc("1 2 21 warnings"), _zr("01 2 21 OK IDLE -- 00"))
        port.expect(_zc("1 0 22 get pos"), _zr("01 0 22 OK IDLE -- 629921 839895"))  # ended on target
        stage.move_to((0.03, 0.04)).wait(2.0)  # speeds split 3:4 so both axes end together
        port.expect(
            _zc("1 0 23 get pos"), _zr("01 0 22 OK IDLE -- 1 1") + _zr("01 0 23 OK IDLE -- 629921 839895")
        )
        assert stage.position() == pytest.approx((0.03, 0.04), abs=1e-7)  # the stale id-20 reply is skipped
        port.expect(_zc("1 0 24 stop"), _zr("01 0 24 OK IDLE -- 0"))
        port.expect(_zc("1 0 25"), _zr("01 0 25 OK IDLE -- 0"))
        stage.stop()
        port.check()
    finally:
        stage.close()


def test_zaber_rejection_and_stall():
    port, stage = _open_zaber()
    try:
        port.expect(_zc("1 1 08 move abs 99999999"), _zr("01 1 08 RJ IDLE -- BADDATA"))
        with pytest.raises(StageCommandError, match=r"RJ BADDATA \(a value is out of range") as info:
            stage.command(1, "move abs 99999999")
        assert info.value.code == "BADDATA"
        port.expect(_zc("1 0 09"), _zr("01 0 09 OK IDLE FS 0"))
        stage.command(0, "")
        assert stage.state == StageState.ALARM and stage.alarm_flag == "FS" and not stage.homed
        port.check()
    finally:
        stage.close()


def test_zaber_outside_stop_fails_the_move():
    """Issue 11: a ``/1 0 stop`` from someone else mid-move left NI and success=True at (0.067, 0.034) m."""
    port, stage = _open_zaber()
    try:
        _home_zaber(port, stage)
        i = _start_move_zaber(port)
        port.expect(_zc(f"1 0 {i:02d}"), _zr(f"01 0 {i:02d} OK BUSY -- 0"))
        port.expect(_zc(f"1 0 {i + 1:02d}"), _zr(f"01 0 {i + 1:02d} OK IDLE NI 0"))  # someone sent a stop
        port.expect(_zc(f"1 1 {i + 2:02d} warnings"), _zr(f"01 1 {i + 2:02d} OK IDLE NI 01 NI"))
        port.expect(_zc(f"1 2 {i + 3:02d} warnings"), _zr(f"01 2 {i + 3:02d} OK IDLE NI 01 NI"))
        port.expect(_zc(f"1 0 {i + 4:02d} get pos"), _zr(f"01 0 {i + 4:02d} OK IDLE NI 1406824 713911"))
        status = stage.move_to((0.2, 0.1))
        with pytest.raises(
            MoveInterrupted, match=r"NI.*ended at \(0.067000, 0.034000\) m.*target \(0.200000, 0.100000\)"
        ):
            status.wait(2.0)
        assert not status.success
        assert stage.homed and stage.state == StageState.IDLE  # at rest, position known: truthful
        port.check()
    finally:
        stage.close()


def test_zaber_short_of_target_fails_even_without_ni():
    """The final position is compared with the target, whatever the flags say."""
    port, stage = _open_zaber()
    try:
        _home_zaber(port, stage)
        i = _start_move_zaber(port)
        port.expect(_zc(f"1 0 {i:02d}"), _zr(f"01 0 {i:02d} OK IDLE -- 0"))
        port.expect(_zc(f"1 1 {i + 1:02d} warnings"), _zr(f"01 1 {i + 1:02d} OK IDLE -- 00"))
        port.expect(_zc(f"1 2 {i + 2:02d} warnings"), _zr(f"01 2 {i + 2:02d} OK IDLE -- 00"))
        port.expect(_zc(f"1 0 {i + 3:02d} get pos"), _zr(f"01 0 {i + 3:02d} OK IDLE -- 4199475 2000000"))
        port.expect(_zc(f"1 0 {i + 4:02d} stop"), _zr(f"01 0 {i + 4:02d} OK IDLE -- 0"))  # the recovery
        port.expect(_zc(f"1 0 {i + 5:02d}"), _zr(f"01 0 {i + 5:02d} OK IDLE -- 0"))
        with pytest.raises(StageError, match=r"4.750 mm from the target .* position_tol_m=1e-06"):
            stage.move_to((0.2, 0.1)).wait(2.0)
        port.check()
    finally:
        stage.close()


@pytest.mark.parametrize("flag", ["FZ", "FQ", "FE", "FD", "FO", "FH", "FV", "FM", "FC", "FS", "FF", "WL"])
def test_zaber_every_fault_fails_the_move(flag):
    """Issue 11: after FQ (encoder) or FD (driver disabled) move_to still reported success."""
    port, stage = _open_zaber()
    try:
        _home_zaber(port, stage)
        i = _start_move_zaber(port)
        port.expect(_zc(f"1 0 {i:02d}"), _zr(f"01 0 {i:02d} OK IDLE {flag} 0"))
        port.expect(_zc(f"1 0 {i + 1:02d} stop"), _zr(f"01 0 {i + 1:02d} OK IDLE {flag} 0"))  # the recovery
        port.expect(_zc(f"1 0 {i + 2:02d}"), _zr(f"01 0 {i + 2:02d} OK IDLE {flag} 0"))
        with pytest.raises(StageAlarm, match=f"{flag} \\({FAULTS[flag]}\\) during move") as info:
            stage.move_to((0.2, 0.1)).wait(2.0)
        assert info.value.code == flag
        assert stage.state == StageState.ALARM and stage.alarm_flag == flag and not stage.homed
        sent = list(port.sent)
        with pytest.raises(StageNotHomed, match=f"fault {flag}"):
            stage.move_to((0.1, 0.1))  # refused before any byte
        assert port.sent == sent
        port.check()
    finally:
        stage.close()


def test_zaber_fault_found_in_axis_warnings_after_idle():
    """A fault on one axis that the device-wide poll did not show still fails the move."""
    port, stage = _open_zaber()
    try:
        _home_zaber(port, stage)
        i = _start_move_zaber(port)
        port.expect(_zc(f"1 0 {i:02d}"), _zr(f"01 0 {i:02d} OK IDLE -- 0"))
        port.expect(_zc(f"1 1 {i + 1:02d} warnings"), _zr(f"01 1 {i + 1:02d} OK IDLE FQ 01 FQ"))
        port.expect(_zc(f"1 0 {i + 2:02d} stop"), _zr(f"01 0 {i + 2:02d} OK IDLE FQ 0"))
        port.expect(_zc(f"1 0 {i + 3:02d}"), _zr(f"01 0 {i + 3:02d} OK IDLE FQ 0"))
        with pytest.raises(StageAlarm, match="FQ \\(encoder error\\) on axis 1") as info:
            stage.move_to((0.2, 0.1)).wait(2.0)
        assert info.value.code == "FQ" and stage.state == StageState.ALARM
        port.check()
    finally:
        stage.close()


def test_zaber_fault_alert_marks_the_stage():
    port, stage = _open_zaber()
    try:
        _home_zaber(port, stage)
        alert = f"!01 2 IDLE FD:{lrc('01 2 IDLE FD')}\r\n".encode()
        port.expect(_zc("1 0 11 get pos"), alert + _zr("01 0 11 OK IDLE FD 5 5"))
        stage.position()
        assert stage.last_alert is not None and stage.last_alert.warning == "FD"
        assert stage.state == StageState.ALARM and stage.alarm_flag == "FD"
        port.check()
    finally:
        stage.close()


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (b"@01 0 08 OK IDLE -- 9:05\r\n", "fails its checksum"),  # the reply, 0 corrupted to 9
        (b"@01 0 08 OK IDLE -- 0\r\n", "carries no checksum although comm.checksum is 1"),
    ],
)
def test_zaber_reply_checksum_verified(reply, why):
    port, stage = _open_zaber()
    try:
        port.expect(_zc("1 0 08 get pos"), reply)
        with pytest.raises(StageError, match=why) as info:
            stage.position()
        assert "transcript://test" in str(info.value) and "get pos" in str(info.value)
        port.check()
    finally:
        stage.close()


def test_zaber_without_checksums():
    port = ScriptedPort([
        (b"/1 0 01 get device.id\n", b"@01 0 01 OK IDLE WR 30222\r\n"),
        (b"/1 0 02 get version\n", b"@01 0 02 OK IDLE WR 7.38\r\n"),
        (b"/1 0 03 get limit.max\n", b"@01 0 03 OK IDLE WR 10498688 10498688\r\n"),
        (b"/1 0 04 get resolution\n", b"@01 0 04 OK IDLE WR 64 64\r\n"),
        (b"/1 0 05 get limit.min\n", b"@01 0 05 OK IDLE WR 0 0\r\n"),
        (b"/1 0 06 warnings\n", b"@01 0 06 OK IDLE WR 01 WR\r\n"),
    ])  # fmt: skip
    stage = ZaberStage(port, LIMITS, name="z", command_timeout_s=0.5, checksum=False)
    try:
        assert not stage.homed
        port.check()
    finally:
        stage.close()


def test_zaber_checksum_refused_names_the_way_out():
    port = ScriptedPort([(_zc("1 0 01 set comm.checksum 1"), b"@01 0 01 RJ IDLE -- BADCOMMAND\r\n")])
    with pytest.raises(StageError, match="refused 'set comm.checksum 1'.*checksum=False"):
        ZaberStage(port, LIMITS, name="z", command_timeout_s=0.5)


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
