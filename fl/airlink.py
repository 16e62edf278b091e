"""The AirLink seam: the only way ``fl`` touches the air.

Client side: "send these symbols, scaled by b, at time T" (``AirTransmitter``).
Server side: "collect n symbols at time T through combiner m" (``AirReceiver``), plus the
per-round channel estimate the precoder needs. ``testbed`` provides both over any ``Radio``
(pilots, estimation, timed bursts); ``sim`` provides a vectorised symbol-level link
(y = sum_k h_k b_k s_k + n) for big payloads and sweeps. The two agree statistically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class AirTransmitter(Protocol):
    def send(self, client: int, symbols: np.ndarray, scale: complex, at_s: float) -> None:
        """Schedule client ``client``'s burst ``scale * symbols`` (complex) to start at ``at_s``."""
        ...


@runtime_checkable
class AirReceiver(Protocol):
    @property
    def num_antennas(self) -> int: ...

    @property
    def noise_power_w(self) -> float: ...

    def estimate_channels(self, clients: Sequence[int]) -> np.ndarray:
        """Channel estimate H (len(clients) x N) at the antennas' current positions."""
        ...

    def collect(self, num_symbols: int, at_s: float, combiner: np.ndarray) -> np.ndarray:
        """The combined sum m^H y over ``num_symbols`` symbols starting at ``at_s`` (complex)."""
        ...


@runtime_checkable
class AirLink(AirTransmitter, AirReceiver, Protocol):
    """Both halves in one object (the symbol-level link, or a lab where one host owns all radios)."""
