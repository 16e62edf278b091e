"""Timed captures on a USRP: a ``num_done`` ``StreamCMD`` with ``stream_now=False`` at the
capture's device time, then ``recv`` calls until the window is in, assembled into one
(channels, n) block by the packets' time stamps (``RxAssembler``).

``RxCaptures`` is the receive side of ``drivers.usrp.UsrpRadio``: it owns the RX streamer the
radio made.
"""

from __future__ import annotations

import time

import numpy as np

from drivers.errors import RadioError
from drivers.radio import RxResult
from drivers.usrp_metadata import enum_name, rx_code
from drivers.usrp_stream import StreamSide
from drivers.usrp_timing import TimingLog, check_schedule

# Samples reach the host a little after their air time.
RX_TRANSPORT_MARGIN_S = 0.1


def check_capture_window(
    at_s: float, num_samples: int, rate_sps: float, now_s: float, timeout_s: float, log: TimingLog
) -> bool:
    """``timeout_s`` bounds the whole capture from now, as on the sim: a window that ends later
    cannot arrive within the wait, so it is a ``timeout`` at once (counted if tolerated: False)."""
    end_s = at_s + num_samples / rate_sps
    if end_s <= now_s + timeout_s:
        return True
    log.report(
        "timeout",
        now_s,
        f"the window ends {end_s - now_s:.3f} s from now, beyond timeout_s={timeout_s}; pass a longer timeout_s",
    )
    return False


def recv_timeouts_s(timeout_s: float, started: float, clock_now: float) -> float:
    """The wait for the next ``recv``: what is left of ``timeout_s`` (counted from the call, so
    the first ``recv`` covers the wait until ``at_s``) plus the transport's latency."""
    return max(0.0, started + timeout_s - clock_now) + RX_TRANSPORT_MARGIN_S


class RxAssembler:
    """Collects the packets of one timed capture into a (channels, n) block.

    ``feed`` takes what one ``recv`` call gave (its metadata code, time and sample count, and the
    samples) and says whether the capture is complete. Errors go through a ``TimingLog``: a
    tolerated overflow is counted and the capture goes on (the lost samples stay zero, placed by
    the packets' time stamps); a tolerated timeout or late command ends it early, zero-filled.
    """

    def __init__(
        self, num_channels: int, num_samples: int, at_s: float, rate_sps: float, log: TimingLog
    ) -> None:
        if num_samples <= 0:
            raise RadioError(f"{log.radio}: receive needs num_samples > 0 (got {num_samples})")
        self.samples = np.zeros((num_channels, num_samples), dtype=np.complex64)
        self.num_samples = num_samples
        self.at_s = at_s
        self.rate_sps = rate_sps
        self.log = log
        self.filled = 0  # samples written so far (the write position)
        self.start_time_s: float | None = None
        self.done = False

    def feed(self, code: str | None, time_s: float | None, count: int, chunk: np.ndarray | None) -> bool:
        if self.done:
            return True
        if code is not None:
            self.log.report(code, time_s if time_s is not None else self.at_s)
            # Tolerated. After timeout or late no more samples will come for this command.
            if code in ("timeout", "late", "broken_chain"):
                self.done = True
            return self.done
        if count <= 0:
            return False
        if self.start_time_s is None:
            self.start_time_s = self.at_s if time_s is None else time_s
        elif time_s is not None:
            # After a tolerated overflow the next packet's time says where it belongs.
            offset = round((time_s - self.start_time_s) * self.rate_sps)
            if offset > self.filled:
                self.filled = min(offset, self.num_samples)
        take = min(count, self.num_samples - self.filled)
        if take > 0 and chunk is not None:
            self.samples[:, self.filled : self.filled + take] = chunk[:, :take]
        self.filled += take
        self.done = self.filled >= self.num_samples
        return self.done

    def result(self) -> RxResult:
        start = self.at_s if self.start_time_s is None else self.start_time_s
        return RxResult(samples=self.samples, start_time_s=start, warnings=dict(self.log.warnings))


class RxCaptures(StreamSide):
    """The receive side of a ``UsrpRadio``: timed captures on its RX streamer (every channel the
    radio uses), with the warnings a capture tolerated added to ``totals``."""

    def receive(
        self, num_samples: int, at_s: float, picked: list[int], timeout_s: float, log: TimingLog
    ) -> RxResult:
        """Capture ``num_samples`` from device time ``at_s``; return the ``picked`` channels.

        ``timeout_s`` bounds the whole capture from now; ``log`` says which codes are tolerated.
        """
        started = time.monotonic()
        now = self.clock.now()
        assembler = RxAssembler(self.num_channels, num_samples, at_s, self.rate_sps, log)
        if not check_schedule(at_s, now, self.min_lead_s, log) or not check_capture_window(
            at_s, num_samples, self.rate_sps, now, timeout_s, log
        ):
            # A tolerated late or timeout: nothing captured.
            return self._done(assembler, picked)
        uhd, streamer = self._uhd, self.streamer
        cmd = uhd.types.StreamCMD(uhd.types.StreamMode.num_done)
        cmd.num_samps = num_samples
        cmd.stream_now = False
        cmd.time_spec = self.clock.spec(at_s)
        buffer = np.zeros((self.num_channels, self.max_per_packet), dtype=np.complex64)
        md = uhd.types.RXMetadata()
        streamer.issue_stream_cmd(cmd)
        try:
            while not assembler.done:
                timeout = recv_timeouts_s(timeout_s, started, time.monotonic())
                count = int(streamer.recv(buffer, md, timeout))
                code = rx_code(enum_name(md.error_code), bool(md.out_of_sequence))
                when = float(md.time_spec.get_real_secs()) if md.has_time_spec else None
                assembler.feed(code, when, count, buffer)
        except RadioError:
            self._drain()
            raise
        return self._done(assembler, picked)

    def _done(self, assembler: RxAssembler, picked: list[int]) -> RxResult:
        result = assembler.result()
        result.samples = np.ascontiguousarray(result.samples[picked])
        for k, v in result.warnings.items():
            self.totals[k] = self.totals.get(k, 0) + v
        return result

    def _drain(self) -> None:
        """Stop streaming and drop whatever is still queued, so the next capture starts clean."""
        uhd = self._uhd
        self.streamer.issue_stream_cmd(uhd.types.StreamCMD(uhd.types.StreamMode.stop_cont))
        buffer = np.zeros((self.num_channels, self.max_per_packet), dtype=np.complex64)
        md = uhd.types.RXMetadata()
        for _ in range(1000):
            if int(self.streamer.recv(buffer, md, 0.05)) == 0:
                break
