"""The Zaber emulator against the ASCII protocol manual: raw bytes in, the manual's replies out."""

from __future__ import annotations

import time

import pytest

from drivers.zaber import lrc, parse_alert, parse_reply
from sim.zaber_device import WARNING_PRIORITY, ZaberDevice


class Raw:
    """Talk to an emulator byte by byte (no driver in between)."""

    def __init__(self, scale: float = 200.0, **kw) -> None:
        self.device = ZaberDevice(time_scale=scale, **kw)

    def lines(self, timeout_s: float = 0.5) -> list[str]:
        """Every line waiting now (waits up to ``timeout_s`` for the first)."""
        out = bytearray(self.device.read(4096, timeout_s))
        while True:
            more = self.device.read(4096, 0.02)
            if not more:
                break
            out += more
        return [line for line in out.decode().split("\r\n") if line]

    def ask(self, text: str) -> str:
        self.device.write(text.encode() + b"\n")
        (line,) = self.lines()
        return line

    def home(self) -> None:
        assert " OK " in self.ask("/1 home")
        time.sleep(0.05)
        assert self.ask("/1 warnings").endswith(" 00")


def test_ni_is_set_by_stop_and_cleared_by_the_next_move_from_idle():
    z = Raw(scale=5.0)  # a slow clock: the stop below lands while the move runs, even on a busy machine
    z.home()
    z.ask("/1 1 move abs 2000000")
    assert z.ask("/1 1 stop").startswith("@01 1 OK BUSY NI")  # still braking
    time.sleep(0.1)
    assert z.ask("/1 1").startswith("@01 1 OK IDLE NI")  # NI stays until the next move...
    assert z.ask("/1 1 move abs 100") == "@01 1 OK BUSY -- 0"  # ...sent while idle clears it
    assert z.ask("/1 1 move abs 5000000") == "@01 1 OK BUSY NI 0"  # a move replacing a move sets it


def test_warning_priority_is_the_manuals():
    assert WARNING_PRIORITY.index("FD") < WARNING_PRIORITY.index("FS")
    assert WARNING_PRIORITY.index("NC") < WARNING_PRIORITY.index("NI")
    assert all(WARNING_PRIORITY.index(f"F{c}") < WARNING_PRIORITY.index("WL") for c in "ZQEDSF")
    z = Raw()
    z.device.axes[0].warnings |= {"FS", "FD", "NI", "NC"}
    assert z.ask("/1 1").split()[4] == "FD"
    assert z.ask("/1 1 warnings").endswith("05 FD FS WR NC NI")


@pytest.mark.parametrize("flag", ["FZ", "FQ", "FE", "FD"])
def test_injected_fault_stops_the_axis_mid_move(flag):
    z = Raw()
    z.home()
    z.device.inject_fault(flag, at=0.5)
    z.ask("/1 1 move abs 2000000")
    time.sleep(0.1)
    reply = parse_reply(z.ask("/1 1 get pos"))
    assert reply.status == "IDLE" and reply.warning == flag
    assert 900_000 < int(reply.data) < 1_100_000  # stopped halfway
    assert z.ask("/1 1 warnings").endswith(f"01 {flag}")
    z.device.inject_fault("FD", axis=2)  # now, on an idle axis
    assert z.ask("/1 2").split()[4] == "FD"
    with pytest.raises(ValueError, match="flag must be one of"):
        z.device.inject_fault("WR")


def test_estop_answers_busy_while_it_stops():
    z = Raw(scale=20.0)
    z.home()
    z.ask("/1 1 move abs 5000000")
    time.sleep(0.01)
    assert z.ask("/1 1 estop").startswith("@01 1 OK BUSY NI")
    time.sleep(0.02)
    assert z.ask("/1 1").startswith("@01 1 OK IDLE NI")


def test_message_ids_and_device_only_commands():
    z = Raw()
    assert z.ask("/1 0 99 get pos") == "@01 0 99 OK IDLE WR 0 0"
    assert z.ask("/1 0 100 get pos") == "@01 0 RJ IDLE WR BADMESSAGEID"
    assert z.ask("/1 2 123 get pos") == "@01 2 RJ IDLE WR BADMESSAGEID"
    assert z.ask("/1 1 get device.id") == "@01 1 RJ IDLE WR DEVICEONLY"
    assert z.ask("/1 2 set comm.alert 1") == "@01 2 RJ IDLE WR DEVICEONLY"
    assert z.ask("/1 0 get device.id") == "@01 0 OK IDLE WR 30222"


def test_checksums_both_ways():
    z = Raw()
    body = "1 0 07 set comm.checksum 1"
    reply = z.ask(f"/{body}:{lrc(body)}")
    assert parse_reply(reply).checksummed  # the setting applies at once
    assert reply == f"@01 0 07 OK IDLE WR 0:{lrc('01 0 07 OK IDLE WR 0')}"
    z.device.write(b"/1 0 08 get pos:00\n")  # a corrupted command is dropped, not run
    assert z.lines(0.1) == [] and z.device.dropped_checksums == 1
    assert z.ask("/1 get comm.checksum").startswith("@01 0 OK IDLE WR 1:")


def test_alerts_when_enabled():
    z = Raw(scale=20.0)
    z.ask("/1 set comm.alert 1")
    z.ask("/1 1 move abs 1000000")  # 48 mm: about 50 ms of wall time at 20x
    time.sleep(0.15)
    assert z.lines() == ["!01 1 IDLE WR"]  # the axis came to rest
    z.ask("/1 set comm.checksum 1")
    z.device.inject_fault("FQ", axis=2)
    (line,) = z.lines()
    alert = parse_alert(line)
    assert (alert.axis, alert.status, alert.warning, alert.checksummed) == (2, "IDLE", "FQ", True)


def test_limit_min_can_be_set():
    z = Raw()
    z.home()
    assert z.ask("/1 1 get limit.min") == "@01 1 OK IDLE -- 0"
    assert z.ask("/1 1 set limit.min 5000") == "@01 1 OK IDLE -- 0"
    assert z.ask("/1 1 get limit.min") == "@01 1 OK IDLE -- 5000"
    assert z.ask("/1 1 move abs 4000") == "@01 1 RJ IDLE -- BADDATA"
    assert z.ask("/1 1 set limit.min 99999999999") == "@01 1 RJ IDLE -- BADDATA"  # above limit.max
    z.ask("/1 1 move min")
    time.sleep(0.05)
    assert z.ask("/1 1 get pos") == "@01 1 OK IDLE -- 5000"


def test_several_devices_on_one_chain():
    z = Raw(addresses=(1, 2, 3))
    z.device.write(b"/get device.id\n")  # to all: every device answers, in address order
    assert z.lines() == ["@01 0 OK IDLE WR 30222", "@02 0 OK IDLE WR 30222", "@03 0 OK IDLE WR 30222"]
    assert z.ask("/2 1 move abs 1000") == "@02 1 OK BUSY WR 0"
    time.sleep(0.05)
    assert z.ask("/2 get pos") == "@02 0 OK IDLE WR 1000 0"
    assert z.ask("/3 get pos") == "@03 0 OK IDLE WR 0 0"
    z.device.write(b"/4 get pos\n")
    assert z.lines(0.05) == []  # nobody at address 4
    with pytest.raises(ValueError, match="distinct numbers 1..99"):
        ZaberDevice(addresses=(1, 1))
