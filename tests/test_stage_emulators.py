"""The emulators on their own: raw bytes through a real pyserial URL or TCP, and motion timing."""

from __future__ import annotations

import math
import time
import uuid

import pytest
import serial
from stage_kit import LIMITS, WAIT_S

from drivers.grbl import GrblStage, parse_status
from drivers.zaber import ZaberStage
from sim.grbl_device import GrblDevice
from sim.motion import Clock, LinearMove, Trapezoid, move_time_s
from sim.serial_url import EmulatorTcpServer, install, register, unregister
from sim.zaber_device import ZaberDevice


# --- motion model ------------------------------------------------------------------------------
def test_trapezoid_and_triangle():
    t = Trapezoid(distance=10.0, v_max=2.0, accel=1.0)  # ramps 2 s each way, cruises 3 s
    assert t.duration == pytest.approx(7.0)
    assert t.at(1.0) == pytest.approx((0.5, 1.0))
    assert t.at(3.5) == pytest.approx((2.0 + 3.0, 2.0))
    assert t.at(7.0) == (10.0, 0.0)
    tri = Trapezoid(distance=1.0, v_max=10.0, accel=1.0)  # never reaches v_max
    assert tri.duration == pytest.approx(2.0)
    assert move_time_s(-1.0, 10.0, 1.0) == pytest.approx(2.0)
    assert LIMITS.move_time_s(1.0, 10.0) == pytest.approx(move_time_s(1.0, 10.0, LIMITS.accel_m_s2))
    with pytest.raises(ValueError):
        Trapezoid(distance=1.0, v_max=0.0, accel=1.0)


def test_linear_move_and_braking():
    m = LinearMove.plan((0.0, 0.0), (3.0, 4.0), speed=1.0, accel=1.0, t0=10.0)
    assert m.t_end == pytest.approx(10.0 + 6.0)
    pos, v = m.state_at(13.0)
    assert pos == pytest.approx((1.5, 2.0)) and v == pytest.approx(1.0)
    brake = m.stopping(13.0, accel=1.0)  # v=1 at a=1: 0.5 units and 1 s to rest, on the same line
    assert brake.t_end == pytest.approx(14.0)
    assert math.dist(brake.end, pos) == pytest.approx(0.5)
    assert brake.state_at(20.0)[1] == 0.0


def test_clock_scale():
    clock = Clock(100.0)
    t0 = clock.now()
    time.sleep(0.02)
    assert clock.now() - t0 >= 1.9
    assert clock.to_real_s(5.0) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="scale"):
        Clock(0.0)


# --- GRBL over a pyserial URL ---------------------------------------------------------------------
@pytest.fixture
def grbl():
    key = f"raw-{uuid.uuid4().hex[:8]}"
    device = GrblDevice(time_scale=200.0, name=key)
    register("grblsim", key, device)
    port = serial.serial_for_url(f"grblsim://{key}", timeout=0.5)
    yield device, port
    port.close()
    unregister("grblsim", key)


def _lines(port, n):
    return [port.readline().decode().rstrip("\r\n") for _ in range(n)]


def _ask(port, text: bytes, n: int = 1) -> list[str]:
    port.write(text)
    return _lines(port, n)


def _status(port):
    port.write(b"?")
    return parse_status(port.readline().decode().strip())


def test_grbl_power_up_and_unlock(grbl):
    _, port = grbl
    assert _lines(port, 3) == ["", "Grbl 1.1h ['$' for help]", "[MSG:'$H'|'$X' to unlock]"]
    assert _status(port).state == "Alarm"
    assert _ask(port, b"G0 X1\n") == ["error:9"]  # G-code locked in alarm
    assert _ask(port, b"$X\n", 2) == ["[MSG:Caution: Unlocked]", "ok"]
    assert _status(port).state == "Idle"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"X\n", "error:2"), (b"1G0\n", "error:1"), (b"$Q\n", "error:2"), (b"G1 F-5 X1\n", "error:4"),
        (b"$22=0\n$20=1\n", "ok"), (b"G" + b"0" * 90 + b"\n", "error:11"), (b"G2 X1\n", "error:22"),
        (b"G0 G1 X1\n", "error:24"), (b"G90 G91\n", "error:21"), (b"G1 X1\n", "error:22"),
        (b"G0 X1 X2\n", "error:25"), (b"G4\n", "error:28"), (b"G80 X1\n", "error:31"), (b"$J=X1\n", "error:22"),
        (b"$J=G0 X1 F10\n", "error:16"), (b"$J=G91 X5 F100\n", "error:15"), (b"$999=1\n", "error:3"),
        (b"G0 P2 X1\n", "error:36"), (b"$1X\n", "error:3"), (b"G2 X-1 F100\n", "error:35"),
        (b"G10 L2 P1\n", "error:26"), (b"G92\n", "error:26"), (b"G53 G2 X-1 I1 F10\n", "error:30"),
    ],
)  # fmt: skip
def test_grbl_error_paths(grbl, line, reply):
    _, port = grbl
    _lines(port, 3)
    _ask(port, b"$X\n", 2)
    port.write(line)
    assert port.readline().decode().strip() == reply


def test_grbl_settings_dump_and_write(grbl):
    _, port = grbl
    _lines(port, 3)
    port.write(b"$$\n")
    lines = []
    while (line := port.readline().decode().strip()) != "ok":
        lines.append(line)
    assert "$110=3000.000" in lines and "$22=1" in lines and "$130=501.000" in lines
    assert _ask(port, b"$110=1500\n") == ["ok"]
    assert _ask(port, b"$22=0\n") == ["ok"]
    assert _ask(port, b"$H\n") == ["error:5"]  # homing disabled now
    assert _ask(port, b"$I\n", 3) == ["[VER:1.1h.20190830:]", "[OPT:V,15,128]", "ok"]
    assert _ask(port, b"$G\n", 2)[0].startswith("[GC:G0 G54 G17 G21 G90 G94 M5 M9")


def test_grbl_motion_hold_resume_and_status_fields(grbl):
    device, port = grbl
    _lines(port, 3)
    assert _ask(port, b"$H\n") == ["ok"]  # answered once homing is done
    assert _ask(port, b"$10=3\n") == ["ok"]  # MPos + buffer state
    assert _ask(port, b"M3 S1000 M8\n") == ["ok"]
    assert _ask(port, b"N7 G1 X-400 Y-300 F600\n") == [
        "ok"
    ]  # stock frame: travel [-500, 0]  # 600 mm/min: 50 s model, 0.25 s real
    time.sleep(0.03)
    s = _status(port)
    # a stock build has no line numbers (report.c: USE_LINE_NUMBERS only)
    assert s.state == "Run" and s.line_number is None and s.buffer == (14, 128) and 0 < s.feed_mm_min <= 600
    port.write(b"!")
    time.sleep(0.02)
    held = _status(port)
    assert held.state == "Hold" and held.substate == 0
    time.sleep(0.02)
    assert _status(port).mpos_mm == held.mpos_mm  # holding still
    port.write(b"~")
    assert _ask(port, b"G4 P0.01\n") == ["ok"]  # after the move ends
    reports = [_status(port) for _ in range(30)]  # report.c: WCO every 10-30 reports, Ov (and A:) 10-20
    assert reports[-1].mpos_mm == (-400.0, -300.0, -1.0) and reports[-1].state == "Idle"
    assert any(r.wco_mm is not None for r in reports)
    assert any(r.overrides == (100, 100, 100) and r.accessories == "SF" for r in reports)


def test_grbl_soft_limit_alarm_needs_reset(grbl):
    _, port = grbl
    _lines(port, 3)
    _ask(port, b"$H\n")
    assert _ask(port, b"G0 X600\n", 2) == ["ALARM:2", "[MSG:Reset to continue]"]
    port.write(b"$X\n")  # ignored until reset
    port.timeout = 0.1
    assert port.readline() == b""
    port.timeout = 0.5
    # the stopped line's ok, then the banner
    assert _ask(port, b"\x18", 4) == ["ok", "", "Grbl 1.1h ['$' for help]", "[MSG:'$H'|'$X' to unlock]"]
    assert _status(port).state == "Alarm"
    assert _ask(port, b"$X\n", 2) == ["[MSG:Caution: Unlocked]", "ok"]  # position kept: unlock is safe
    assert _ask(port, b"G0 X-10\n") == ["ok"]


def test_grbl_hard_limit_without_soft_limits(grbl):
    device, port = grbl
    _lines(port, 3)
    _ask(port, b"$H\n")
    assert _ask(port, b"$20=0\n") == ["ok"]
    assert _ask(port, b"G1 X20 F3000\n") == ["ok"]  # beyond the switch at machine 0
    assert _lines(port, 2) == ["ALARM:1", "[MSG:Reset to continue]"]
    port.write(b"?")  # GRBL answers no status report in a critical alarm
    port.timeout = 0.1
    assert port.readline() == b""
    port.timeout = 0.5
    # The carriage sits on the switch: GRBL says so after the banner (CHECK_LIMITS_AT_INIT).
    assert _ask(port, b"\x18", 4)[2:] == ["[MSG:Check Limits]", "[MSG:'$H'|'$X' to unlock]"]
    s = _status(port)
    assert s.state == "Alarm" and s.mpos_mm[0] == pytest.approx(0.0, abs=1e-3)
    assert _ask(port, b"$H\n") == ["ok"]


def test_grbl_reset_mid_move_loses_position(grbl):
    _, port = grbl
    _lines(port, 3)
    _ask(port, b"$H\n")
    _ask(port, b"G1 X-300 F600\n")
    time.sleep(0.02)
    assert _ask(port, b"\x18", 4) == ["ALARM:3", "", "Grbl 1.1h ['$' for help]", "[MSG:'$H'|'$X' to unlock]"]


def test_grbl_jog_and_cancel(grbl):
    _, port = grbl
    _lines(port, 3)
    _ask(port, b"$H\n")
    assert _ask(port, b"$J=G91 X-200 F600\n") == ["ok"]
    time.sleep(0.02)
    assert _status(port).state == "Jog"
    assert _ask(port, b"G0 X1\n") == ["error:9"]  # G-code locked while jogging
    port.write(b"\x85")
    time.sleep(0.02)
    s = _status(port)
    assert s.state == "Idle" and -201 < s.mpos_mm[0] < -1


def test_grbl_safety_door(grbl):
    device, port = grbl
    _lines(port, 3)
    _ask(port, b"$H\n")
    _ask(port, b"G1 X-300 F600\n")
    time.sleep(0.02)
    device.set_door(True)
    time.sleep(0.02)
    s = _status(port)
    assert s.state == "Door" and s.substate == 1 and "D" in s.pins
    device.set_door(False)
    assert _status(port).substate == 0
    port.write(b"~")
    assert _ask(port, b"G4 P0\n") == ["ok"]
    assert _status(port).mpos_mm[0] == -300.0


def test_grbl_over_tcp_socket_url():
    device = GrblDevice(time_scale=200.0)
    with EmulatorTcpServer(device) as server:
        assert server.url.startswith("socket://127.0.0.1:")
        stage = GrblStage(server.url, LIMITS, name="tcp", command_timeout_s=1.0)
        try:
            stage.home().wait(WAIT_S)
            stage.move_to((0.12, 0.34)).wait(WAIT_S)
            assert stage.position() == pytest.approx((0.12, 0.34))
        finally:
            stage.close()


def test_zaber_over_tcp_and_raw_grammar():
    device = ZaberDevice(time_scale=200.0)
    with EmulatorTcpServer(device) as server:
        port = serial.serial_for_url(server.url, timeout=1.0)
        try:

            def ask(text: bytes) -> str:
                port.write(text)
                return port.readline().decode().strip()

            assert ask(b"/1 0 get pos\n") == "@01 0 OK IDLE WR 0 0"
            assert ask(b"/1 1 42 move abs 1000\n") == "@01 1 42 OK BUSY WR 0"
            assert ask(b"/1 move abs 1000\n") == "@01 0 RJ IDLE WR BADAXIS"
            assert ask(b"/1 1 move abs -5\n") == "@01 1 RJ IDLE WR BADDATA"
            assert ask(b"/1 1 frobnicate\n") == "@01 1 RJ IDLE WR BADCOMMAND"
            assert ask(b"/1 3 get pos\n") == "@01 0 RJ IDLE WR BADAXIS"
            assert ask(b"/1 home\n") == "@01 0 OK BUSY WR 0"
            time.sleep(0.05)
            assert ask(b"/1 warnings\n").endswith("00")
            assert ask(b"/1 get limit.max\n") == "@01 0 OK IDLE -- 10498688 10498688"
            assert ask(b"/1 1 get maxspeed\n") == f"@01 1 OK IDLE -- {round(50e-3 / 0.047625e-6 * 1.6384)}"
            port.write(b"/2 0 get pos\n")  # another address: no one answers
            port.timeout = 0.1
            assert port.readline() == b""
        finally:
            port.close()


def test_zaber_stage_over_socket():
    device = ZaberDevice(time_scale=200.0)
    with EmulatorTcpServer(device) as server:
        stage = ZaberStage(server.url, LIMITS, name="ztcp", command_timeout_s=1.0, poll_s=0.01)
        try:
            stage.home().wait(WAIT_S)
            stage.move_to((0.25, 0.05)).wait(WAIT_S)
            assert stage.position() == pytest.approx((0.25, 0.05), abs=1e-6)
        finally:
            stage.close()


def test_url_errors():
    install()
    with pytest.raises(serial.SerialException, match="unknown option 'bogus'"):
        serial.serial_for_url("grblsim://x?bogus=1")
    with pytest.raises(serial.SerialException, match="name the emulated device"):
        serial.serial_for_url("zabersim://")
    with pytest.raises(ValueError, match="unknown emulator scheme"):
        register("nosuch", "x", GrblDevice())
