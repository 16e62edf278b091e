"""Timed bursts on a USRP: a burst cut into ``send`` packets (the first carries start of burst
and its ``TXMetadata.time_spec``, the last end of burst), handed to the device without waiting
for its end, and its verdict read later from UHD's async messages (``BurstTracker``).

``TxBursts`` is the transmit side of ``drivers.usrp.UsrpRadio``: it owns the TX streamer the
radio made and the bursts still in flight on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from drivers.errors import RadioError
from drivers.radio import TxResult
from drivers.usrp_metadata import enum_name, tx_event_code
from drivers.usrp_stream import StreamSide
from drivers.usrp_timing import DeviceClock, TimingLog, check_schedule

# How long after a burst's end its burst_ack may take before it is a timeout.
ACK_MARGIN_S = 1.0


def tx_packets(num_samples: int, max_per_packet: int) -> list[tuple[int, int]]:
    """Sample ranges of a burst, one ``send`` each; the first carries SOB+time, the last EOB."""
    if max_per_packet <= 0:
        raise RadioError(f"max samples per packet must be > 0 (got {max_per_packet})")
    if num_samples <= 0:
        raise RadioError(f"a burst needs at least one sample (got {num_samples})")
    return [(a, min(a + max_per_packet, num_samples)) for a in range(0, num_samples, max_per_packet)]


def as_tx_block(samples: np.ndarray, num_channels: int, radio: str) -> np.ndarray:
    """Samples as a C-contiguous complex64 (channels, n) block, with a clear error on shape."""
    block = np.asarray(samples)
    if block.ndim == 1:
        block = block[np.newaxis, :]
    if block.ndim != 2 or block.shape[0] != num_channels or block.shape[1] == 0:
        raise RadioError(
            f"{radio}: transmit samples must be shaped ({num_channels}, n>0) or (n,) for one channel "
            f"(got {np.shape(samples)})"
        )
    if not np.iscomplexobj(block) and not np.isrealobj(block):
        raise RadioError(f"{radio}: transmit samples must be numeric (got dtype {block.dtype})")
    block = np.ascontiguousarray(block, dtype=np.complex64)
    if not np.all(np.isfinite(block)):
        raise RadioError(f"{radio}: transmit samples hold NaN or inf")
    return block


class BurstTracker:
    """Bursts handed to the device whose outcome (UHD's async messages) is still to come.

    UHD reports a burst's fate later, in order: ``burst_ack`` per channel when its end went out,
    or ``time_error`` (late; the burst is dropped), ``underflow``, ``seq_error`` on the way.
    ``transmit`` returns once the burst is handed over, so several radios can be scheduled
    for one instant from one thread; their events are read on the radio's next call. Each
    burst keeps its caller's ``TimingLog``: a tolerated code is counted, any other raises then.
    """

    def __init__(self, num_channels: int, radio: str = "usrp") -> None:
        self.num_channels = num_channels
        self.radio = radio
        self.pending: list[tuple[float, float, TimingLog, set[int]]] = []  # at_s, deadline, log, acked
        self.totals: dict[str, int] = {}

    def add(self, at_s: float, ack_deadline: float, log: TimingLog) -> None:
        self.pending.append((at_s, ack_deadline, log, set()))

    def _finish(self, index: int) -> None:
        _, _, log, _ = self.pending.pop(index)
        for k, v in log.warnings.items():
            self.totals[k] = self.totals.get(k, 0) + v

    def event(self, name: str, time_s: float | None, channel: int) -> None:
        """One async message; raises the burst's ``RadioTimingError`` unless it tolerated it."""
        code = tx_event_code(name)
        if not self.pending:
            if code is not None:  # an event for no burst we know: never swallow it
                TimingLog((), self.radio, "transmit").report(
                    code, time_s, f"UHD event {name} outside any burst"
                )
            return
        at_s, _, log, acked = self.pending[0]
        if name == "burst_ack":
            acked.add(channel)
            if len(acked) >= self.num_channels:
                self._finish(0)
            return
        if code is None:
            return
        if code == "late":  # the device dropped the whole burst: no ack follows
            self._finish(0)
        log.report(
            code, at_s if time_s is None else time_s, f"UHD event {name} for the burst at {at_s:.6f} s"
        )

    def check_overdue(self, now: float) -> None:
        """A burst whose ack is overdue (by the host's clock) is a ``timeout``."""
        while self.pending and self.pending[0][1] < now:
            at_s, _, log, _ = self.pending[0]
            self._finish(0)
            log.report("timeout", at_s, "no burst_ack from the device in time")


class TxBursts(StreamSide):
    """The transmit side of a ``UsrpRadio``: timed bursts on its TX streamer, and their verdicts.

    ``transmit`` hands a burst over and returns; ``poll`` reads the verdicts already here and
    ``flush`` waits for all of them. A tolerated code is added to ``totals`` (the radio's
    warning counts, shared with the receive side); any other raises on the call that reads it.
    """

    def __init__(
        self,
        uhd: Any,
        clock: DeviceClock,
        num_channels: int,
        name: str,
        min_lead_s: float,
        wait_for_ack: bool,
        totals: dict[str, int],
    ) -> None:
        super().__init__(uhd, clock, num_channels, min_lead_s, totals)
        self.name = name
        self.wait_for_ack = wait_for_ack
        self.tracker = BurstTracker(num_channels, name)

    @property
    def pending(self) -> int:
        """Bursts handed over whose verdict has not been read yet."""
        return len(self.tracker.pending)

    def transmit(self, samples: np.ndarray, at_s: float, tolerate: Sequence[str] = ()) -> TxResult:
        log = TimingLog(tolerate, self.name, "transmit")
        block = as_tx_block(samples, self.num_channels, self.name)
        # An earlier burst's failure surfaces before this one goes out.
        self.poll()
        now = self.clock.now()
        n = block.shape[1]
        if not check_schedule(at_s, now, self.min_lead_s, log):
            return self._done(at_s, n, log)
        uhd, streamer = self._uhd, self.streamer
        duration_s = n / self.rate_sps
        # A timed burst fills the device buffer and then waits: send may block until at_s.
        send_timeout = (at_s - now) + duration_s + 0.5
        md = uhd.types.TXMetadata()
        packets = tx_packets(n, self.max_per_packet)
        for i, (a, b) in enumerate(packets):
            md.start_of_burst = i == 0
            md.end_of_burst = i == len(packets) - 1
            md.has_time_spec = i == 0
            if i == 0:
                md.time_spec = self.clock.spec(at_s)
            sent_to = a
            while sent_to < b:
                sent = int(streamer.send(np.ascontiguousarray(block[:, sent_to:b]), md, send_timeout))
                if sent == 0:
                    self._end_burst()
                    log.report("timeout", at_s, "the device took no samples within the send timeout")
                    return self._done(at_s, n, log)
                sent_to += sent
                md.start_of_burst = False
                md.has_time_spec = False
        ack_deadline = time.monotonic() + (at_s - now) + duration_s + ACK_MARGIN_S
        self.tracker.add(at_s, ack_deadline, log)
        if self.wait_for_ack:
            self.flush(ack_deadline - time.monotonic() + 0.1)
        return TxResult(start_time_s=at_s, num_samples=n, warnings=dict(log.warnings))

    def poll(self) -> None:
        """Read the async messages already here (no waiting); raise an untolerated burst error."""
        if self.streamer is None:
            return
        amd = self._uhd.types.TXAsyncMetadata()
        try:
            while self._read_event(amd, 0.0):
                pass
            self.tracker.check_overdue(time.monotonic())
        finally:
            self._sync_totals()

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every burst handed over has its verdict; raise the first untolerated one."""
        amd = self._uhd.types.TXAsyncMetadata()
        deadline = time.monotonic() + max(0.0, timeout_s)
        try:
            while self.tracker.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.tracker.check_overdue(float("inf"))
                    break
                self._read_event(amd, min(left, 0.1))
                self.tracker.check_overdue(time.monotonic())
        finally:
            self._sync_totals()

    def flush_in_flight(self, at_most_s: float = math.inf) -> None:
        """Wait for the bursts in flight as long as the last one may still take (at least 0.1 s)."""
        if self.streamer is not None and self.tracker.pending:
            self.flush(min(at_most_s, max(0.1, self.tracker.pending[-1][1] - time.monotonic())))

    def _end_burst(self) -> None:
        md = self._uhd.types.TXMetadata()
        md.end_of_burst = True
        empty = np.zeros((self.num_channels, 0), dtype=np.complex64)
        self.streamer.send(empty, md, 0.1)

    def _read_event(self, amd: Any, timeout_s: float) -> bool:
        if not self.streamer.recv_async_msg(amd, timeout_s):
            return False
        when = float(amd.time_spec.get_real_secs()) if amd.has_time_spec else None
        self.tracker.event(enum_name(amd.event_code), when, int(amd.channel))
        return True

    def _sync_totals(self) -> None:
        for k, v in self.tracker.totals.items():
            self.totals[k] = self.totals.get(k, 0) + v
        self.tracker.totals.clear()

    def _done(self, at_s: float, n: int, log: TimingLog) -> TxResult:
        for k, v in log.warnings.items():
            self.totals[k] = self.totals.get(k, 0) + v
        return TxResult(start_time_s=at_s, num_samples=n, warnings=dict(log.warnings))
