"""The channel seam: anything that answers H at given antenna positions, with a gradient.

The sim's field-response model, a fitted model and a measured map from a campaign all fit it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ChannelModel(Protocol):
    def response(self, positions_m: np.ndarray) -> np.ndarray:
        """H (K x N complex) for antennas at ``positions_m`` (N x 2 metres)."""
        ...

    def gradient(self, positions_m: np.ndarray) -> np.ndarray:
        """dH[k, n] / d(x_n, y_n): (K x N x 2) complex."""
        ...
