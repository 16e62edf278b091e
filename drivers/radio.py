"""The radio contract.

A ``Radio`` is one software radio (a USRP, or a ``SimRadio`` on the simulated medium). Time is
the device's own clock in seconds, shared across radios by PPS + 10 MHz in the lab (or by the
medium's virtual clock in sim). IQ samples are complex64, shaped (channels, samples).

Timed operations report UHD's metadata codes: a burst scheduled in the past is ``late``; a capture
whose samples do not arrive is ``timeout``; lost RX samples are ``overflow``; a TX that ran dry is
``underflow``. Each becomes a ``RadioTimingError`` carrying the code and the time, unless the
caller asked to tolerate it, in which case it is counted in the result's ``warnings``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from drivers.errors import RadioError, RadioLimitError, RadioTimingError

ClockSource = Literal["internal", "external", "gpsdo"]
TIMING_CODES = ("late", "timeout", "overflow", "underflow", "seq_error", "time_error", "broken_chain")


@dataclass(frozen=True)
class RadioSettings:
    frequency_hz: float = 2.4e9
    rate_sps: float = 1e6
    tx_gain_db: float = 0.0
    rx_gain_db: float = 30.0
    max_tx_gain_db: float = 60.0  # the cap: a higher TX gain is refused before it reaches the device
    clock_source: ClockSource = "internal"
    time_source: ClockSource = "internal"
    tx_antenna: str = "TX/RX"
    rx_antenna: str = "RX2"

    def checked(self) -> RadioSettings:
        """Return self, or raise ``RadioLimitError`` naming the setting that breaks a limit."""
        if self.tx_gain_db > self.max_tx_gain_db:
            raise RadioLimitError(
                f"tx_gain_db={self.tx_gain_db} exceeds the configured cap max_tx_gain_db="
                f"{self.max_tx_gain_db}; lower the gain or raise the cap in the config"
            )
        if self.rate_sps <= 0 or self.frequency_hz <= 0:
            raise RadioLimitError(
                f"rate_sps={self.rate_sps} and frequency_hz={self.frequency_hz} must both be > 0"
            )
        return self


def parse_device_args(text: str) -> dict[str, str]:
    """UHD device args as UHD's ``device_addr_t`` reads them: ``key=value`` pairs separated by
    commas (empty pairs skipped, a bare key has an empty value). Raise ``ValueError`` with UHD's
    own words otherwise, e.g. ``invalid args string: type=b200,,==``."""
    out: dict[str, str] = {}
    for pair in str(text).split(","):
        if not pair.strip():
            continue
        toks = pair.split("=")
        if len(toks) == 1:
            toks.append("")
        if len(toks) != 2:
            raise ValueError(f"invalid args string: {text}")
        out[toks[0].strip()] = toks[1].strip()
    return out


@dataclass
class TxResult:
    """What a timed burst did: its start time and any tolerated warnings (code -> count)."""

    start_time_s: float
    num_samples: int
    warnings: dict[str, int] = field(default_factory=dict)


@dataclass
class RxResult:
    """A timed capture: ``samples`` is (channels, n) complex64, starting at ``start_time_s``."""

    samples: np.ndarray
    start_time_s: float
    warnings: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Radio(Protocol):
    name: str

    @property
    def settings(self) -> RadioSettings: ...

    @property
    def num_rx_channels(self) -> int: ...

    def configure(self, settings: RadioSettings) -> None: ...

    def time_now(self) -> float: ...

    def set_time_next_pps(self, time_s: float) -> None: ...

    def transmit(self, samples: np.ndarray, at_s: float, tolerate: Sequence[str] = ()) -> TxResult: ...

    def receive(
        self,
        num_samples: int,
        at_s: float,
        channels: Sequence[int] | None = None,
        timeout_s: float = 1.0,
        tolerate: Sequence[str] = (),
    ) -> RxResult: ...

    def sensors(self) -> dict[str, bool | float | str]: ...

    def close(self) -> None: ...


__all__ = [
    "TIMING_CODES",
    "ClockSource",
    "Radio",
    "RadioError",
    "RadioLimitError",
    "RadioSettings",
    "RadioTimingError",
    "RxResult",
    "TxResult",
    "parse_device_args",
]
