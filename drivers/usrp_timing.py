"""Time on a USRP: the ``TimingLog`` that turns timing codes into errors or counted warnings, the
checks that refuse a timed command before it reaches the device, the waits for a PPS edge or a
reference lock, and ``DeviceClock``, which reads the device time and latches it at a PPS edge.

Timing follows UHD's sync guide (host/docs/driver_usage/sync.dox): a shared 10 MHz + PPS gives a
common clock; ``set_time_next_pps`` is called right after a PPS edge so every motherboard latches
the same time at the following edge.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from drivers.errors import RadioError, RadioTimingError
from drivers.radio import TIMING_CODES

# Codes that mean the stream itself is broken, not a timing slip: never tolerated.
FATAL_CODES = frozenset({"alignment", "bad_packet"})


def check_tolerate(tolerate: Iterable[str]) -> frozenset[str]:
    """Validate a caller's ``tolerate`` list against the contract's timing codes."""
    codes = frozenset(tolerate)
    unknown = sorted(codes - set(TIMING_CODES))
    if unknown:
        raise RadioError(f"tolerate={unknown} holds unknown codes; allowed: {list(TIMING_CODES)}")
    return codes


class TimingLog:
    """Turns metadata codes into ``RadioTimingError`` or, where tolerated, counted warnings."""

    def __init__(self, tolerate: Iterable[str], radio: str, what: str) -> None:
        self.tolerate = check_tolerate(tolerate)
        self.radio = radio
        self.what = what
        self.warnings: dict[str, int] = {}

    def report(self, code: str, time_s: float | None, detail: str = "") -> None:
        """Count ``code`` if tolerated, else raise. ``time_s`` is the device time it refers to."""
        when = "" if time_s is None else f" at device time {time_s:.9f} s"
        extra = f" ({detail})" if detail else ""
        if code in FATAL_CODES:
            raise RadioError(f"{self.radio}: {self.what}: stream error {code!r}{when}{extra}")
        if code in self.tolerate:
            self.warnings[code] = self.warnings.get(code, 0) + 1
            return
        raise RadioTimingError(
            f"{self.radio}: {self.what}: {code}{when}{extra}; pass tolerate=[{code!r}] to count it instead",
            code=code,
            time_s=time_s,
        )


# --- scheduling ----------------------------------------------------------------------------------
def split_time(time_s: float) -> tuple[int, float]:
    """(full seconds, fractional seconds), so a ``TimeSpec`` keeps sub-sample precision."""
    if not math.isfinite(time_s) or time_s < 0:
        raise RadioError(f"device time must be a finite number >= 0 s (got {time_s!r})")
    full = math.floor(time_s)
    return int(full), float(time_s - full)


def check_schedule(at_s: float, now_s: float, min_lead_s: float, log: TimingLog) -> bool:
    """Catch a timed command whose time has (nearly) passed before it reaches the device.

    True: go ahead. A late command raises ``late`` (with the device time ``now_s``), or, if the
    caller tolerates ``late``, is counted and False says to skip it, as the device would.
    """
    if not math.isfinite(at_s):
        raise RadioError(f"{log.radio}: {log.what}: at_s must be finite (got {at_s!r})")
    if at_s >= now_s + min_lead_s:
        return True
    log.report(
        "late",
        now_s,
        f"scheduled for {at_s:.6f} s, needs >= {min_lead_s * 1e3:.1f} ms of lead; schedule it later",
    )
    return False


# --- waits ---------------------------------------------------------------------------------------
def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    poll_s: float = 0.01,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Poll ``predicate`` until true (True) or ``timeout_s`` passes (False)."""
    deadline = clock() + timeout_s
    while True:
        if predicate():
            return True
        if clock() >= deadline:
            return False
        sleep(poll_s)


def wait_for_pps_edge(
    read_last_pps_s: Callable[[], float],
    timeout_s: float = 1.5,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Return right after the time of the last PPS changes (a fresh edge); RadioError if none."""
    last = read_last_pps_s()
    if not wait_until(lambda: read_last_pps_s() != last, timeout_s, 0.005, sleep, clock):
        raise RadioError(
            f"no PPS edge within {timeout_s} s (last PPS time stayed {last}); check the PPS cable "
            "and the time_source setting"
        )
    return read_last_pps_s()


def wait_for_lock(
    read_locked: Callable[[], bool],
    timeout_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    if not wait_until(read_locked, timeout_s, 0.05, sleep, clock):
        raise RadioError(f"{what} did not lock within {timeout_s} s; check the 10 MHz reference")


# --- the device clock ----------------------------------------------------------------------------
class DeviceClock:
    """A ``MultiUSRP``'s time: read it, turn seconds into ``TimeSpec``s, and set it on every
    motherboard at once (at a PPS edge, or now when there is no shared PPS)."""

    def __init__(self, uhd: Any, usrp: Any, name: str) -> None:
        self._uhd = uhd
        self._usrp = usrp
        self.name = name

    def now(self) -> float:
        return float(self._usrp.get_time_now().get_real_secs())

    def spec(self, time_s: float) -> Any:
        """A ``TimeSpec`` for ``time_s``, split so it keeps sub-sample precision."""
        full, frac = split_time(time_s)
        return self._uhd.types.TimeSpec(full, frac)

    def set_next_pps(self, time_s: float, time_source: str) -> None:
        """Latch ``time_s`` at the next PPS edge on every motherboard (sync.dox's recipe).

        With ``time_source='internal'`` there is no shared PPS, so the time is set now instead.
        """
        u = self._usrp
        if time_source == "internal":
            u.set_time_now(self.spec(time_s))
            return

        def last_pps() -> float:
            return float(u.get_time_last_pps(0).get_real_secs())

        # Set right after an edge so every board sees the command before the next one.
        wait_for_pps_edge(last_pps)
        u.set_time_next_pps(self.spec(time_s))
        wait_for_pps_edge(last_pps)
        self._check_boards_agree(time_s)

    def set_unknown_pps(self, time_s: float) -> None:
        """UHD's own PPS-edge search, then the same time on every motherboard at the next edge."""
        self._usrp.set_time_unknown_pps(self.spec(time_s))
        self._check_boards_agree(time_s)

    def _check_boards_agree(self, time_s: float) -> None:
        u = self._usrp
        pps = [float(u.get_time_last_pps(mb).get_real_secs()) for mb in range(int(u.get_num_mboards()))]
        if max(pps) - min(pps) > 0.5 or abs(pps[0] - time_s) > 1.5:
            raise RadioError(
                f"{self.name}: time alignment failed: last-PPS times per motherboard {pps} (wanted {time_s}); "
                "check that every board gets the same PPS"
            )
