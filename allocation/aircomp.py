"""Over-the-air computation maths (docs/explanation/system-model.md section 3): zero-forcing precoding and its MSE.

Client k sends x_k = b_k s_k; the receiver forms m^H y / sqrt(eta). Zero forcing makes every
client arrive with amplitude phi_k:  b_k = sqrt(eta) phi_k (m^H h_k)^* / |m^H h_k|^2,
and the power caps |b_k|^2 <= P_k give eta = min_k P_k |m^H h_k|^2 / phi_k^2.
"""

from __future__ import annotations

import numpy as np


def effective_channels(channels: np.ndarray, power_w: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The auxiliary channel h~_k = sqrt(P_k) / phi_k h_k (K x N): folds power into the gain."""
    scale = np.sqrt(np.asarray(power_w, dtype=float)) / np.asarray(weights, dtype=float)
    return np.asarray(channels) * scale[:, None]


def combined_gains(combiner: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """m^H h_k for each row h_k of ``channels`` (K,)."""
    return np.asarray(channels) @ np.conj(np.asarray(combiner))


def power_scale(
    combiner: np.ndarray, channels: np.ndarray, power_w: np.ndarray, weights: np.ndarray
) -> float:
    """eta = min_k P_k |m^H h_k|^2 / phi_k^2: the weakest client sets the scale for all."""
    g2 = np.abs(combined_gains(combiner, channels)) ** 2
    return float(np.min(np.asarray(power_w) * g2 / np.asarray(weights, dtype=float) ** 2))


def zero_forcing_scalars(
    combiner: np.ndarray, channels: np.ndarray, weights: np.ndarray, eta: float
) -> np.ndarray:
    """b_k = sqrt(eta) phi_k (m^H h_k)^* / |m^H h_k|^2 (K,) complex."""
    g = combined_gains(combiner, channels)
    return np.sqrt(eta) * np.asarray(weights, dtype=float) * np.conj(g) / np.abs(g) ** 2


def aggregation_mse(
    combiner: np.ndarray,
    channels: np.ndarray,
    power_w: np.ndarray,
    weights: np.ndarray,
    noise_power_w: float,
) -> float:
    """Per complex symbol: sigma^2 ||m||^2 / eta (the de-normalised sum's error variance)."""
    eta = power_scale(combiner, channels, power_w, weights)
    return float(noise_power_w * np.sum(np.abs(combiner) ** 2) / eta)
