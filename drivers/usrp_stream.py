"""What both sides of a ``drivers.usrp.UsrpRadio`` hold: the streamer the radio made for them
(made anew whenever the sample rate changes), its packet size and rate, the device clock that
times their commands, and the radio's shared warning counts."""

from __future__ import annotations

import math
from typing import Any

from drivers.usrp_timing import DeviceClock


class StreamSide:
    def __init__(
        self, uhd: Any, clock: DeviceClock, num_channels: int, min_lead_s: float, totals: dict[str, int]
    ) -> None:
        self._uhd = uhd
        self.clock = clock
        self.num_channels = num_channels
        self.min_lead_s = min_lead_s
        # The radio's warning counts, shared by both sides: a tolerated code is added here.
        self.totals = totals
        self.streamer: Any = None
        self.max_per_packet = 0
        self.rate_sps = math.nan

    def attach(self, streamer: Any, rate_sps: float) -> None:
        """Use ``streamer`` from now on (the radio makes a new one whenever the sample rate changes)."""
        self.streamer = streamer
        self.max_per_packet = int(streamer.get_max_num_samps())
        self.rate_sps = rate_sps
