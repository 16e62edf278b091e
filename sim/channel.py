"""The field-response channel of movable antennas (docs/explanation/system-model.md section 2; Zhu, Ma and Zhang).

Far field: every position in the region sees the same paths, and moving an antenna only changes
each path's phase. Client k has L paths with angles (theta, phi) and complex gains sigma; at
position r = (x, y) the channel to client k is

    h_k(r) = sum_l sigma_{k,l} exp(j (kx_{k,l} x + ky_{k,l} y)),
    kx = 2 pi sin(theta) cos(phi) / lambda,   ky = 2 pi cos(theta) / lambda.

``FieldResponseChannel`` answers ``response(positions)`` (K x N) and ``gradient(positions)``
(K x N x 2), which is the channel seam that ``allocation`` optimises over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SPEED_OF_LIGHT_M_S = 299_792_458.0


def wavelength_m(carrier_hz: float) -> float:
    return SPEED_OF_LIGHT_M_S / carrier_hz


def path_loss_linear(distance_m: np.ndarray, exponent: float = 2.8, ref_loss_db: float = 40.0) -> np.ndarray:
    """Large-scale power gain beta = 10^(-(PL_1m + 10 n log10 d) / 10)."""
    distance_m = np.asarray(distance_m, dtype=float)
    return 10.0 ** (-(ref_loss_db + 10.0 * exponent * np.log10(distance_m)) / 10.0)


@dataclass(frozen=True)
class FieldResponseChannel:
    """Paths of every client; ``gains`` is (K, L) complex, ``kx``/``ky`` (K, L) in rad/m."""

    gains: np.ndarray
    kx: np.ndarray
    ky: np.ndarray
    wavelength_m: float

    @property
    def num_clients(self) -> int:
        return self.gains.shape[0]

    @classmethod
    def from_angles(
        cls, gains: np.ndarray, theta: np.ndarray, phi: np.ndarray, wavelength_m: float
    ) -> FieldResponseChannel:
        k0 = 2.0 * np.pi / wavelength_m
        return cls(
            gains=np.asarray(gains, dtype=complex),
            kx=k0 * np.sin(theta) * np.cos(phi),
            ky=k0 * np.cos(theta),
            wavelength_m=wavelength_m,
        )

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        num_clients: int,
        num_paths: int,
        wavelength_m: float,
        path_gain: np.ndarray | float = 1.0,
        rician_k: float = 0.0,
    ) -> FieldResponseChannel:
        """Draw angles ~ U[0, pi] and gains ~ CN(0, beta_k / L) (or a Rician split)."""
        theta = rng.uniform(0.0, np.pi, (num_clients, num_paths))
        phi = rng.uniform(0.0, np.pi, (num_clients, num_paths))
        beta = np.broadcast_to(np.asarray(path_gain, dtype=float), (num_clients,))
        if rician_k > 0 and num_paths > 1:
            share = np.full(num_paths, 1.0 / ((rician_k + 1.0) * (num_paths - 1)))
            share[0] = rician_k / (rician_k + 1.0)
        else:
            share = np.full(num_paths, 1.0 / num_paths)
        unit = (
            rng.standard_normal((num_clients, num_paths)) + 1j * rng.standard_normal((num_clients, num_paths))
        ) / np.sqrt(2.0)
        gains = unit * np.sqrt(beta[:, None] * share[None, :])
        return cls.from_angles(gains, theta, phi, wavelength_m)

    def subset(self, clients: np.ndarray | list[int]) -> FieldResponseChannel:
        idx = np.asarray(clients, dtype=int)
        return FieldResponseChannel(self.gains[idx], self.kx[idx], self.ky[idx], self.wavelength_m)

    def _path_phasors(self, positions_m: np.ndarray) -> np.ndarray:
        pos = np.asarray(positions_m, dtype=float).reshape(-1, 2)
        phase = self.kx[:, :, None] * pos[None, None, :, 0] + self.ky[:, :, None] * pos[None, None, :, 1]
        return np.exp(1j * phase)  # (K, L, N)

    def response(self, positions_m: np.ndarray) -> np.ndarray:
        """Channel matrix H (K x N) with the antennas at ``positions_m`` (N x 2, metres)."""
        return np.einsum("kl,kln->kn", self.gains, self._path_phasors(positions_m))

    def gradient(self, positions_m: np.ndarray) -> np.ndarray:
        """dH[k, n] / d(x_n, y_n): (K x N x 2) complex. Antenna n only moves its own column."""
        weighted = self.gains[:, :, None] * self._path_phasors(positions_m)  # (K, L, N)
        d_dx = np.einsum("kl,kln->kn", 1j * self.kx, weighted)
        d_dy = np.einsum("kl,kln->kn", 1j * self.ky, weighted)
        return np.stack([d_dx, d_dy], axis=-1)

    def path_power(self) -> np.ndarray:
        """Per-client mean power sum_l |sigma_{k,l}|^2 (the large-scale gain realised)."""
        return np.sum(np.abs(self.gains) ** 2, axis=1)


def draw_lab_channel(lab: Any, rng: np.random.Generator) -> FieldResponseChannel:
    """The clients of a ``testbed.config.LabSection`` (duck-typed: ``sim`` does not import
    testbed): distances uniform in ``clients.distance_m``, log-distance path loss, and
    ``medium.paths`` field-response paths each."""
    medium = lab.medium
    count = int(lab.clients.count)
    distances = rng.uniform(lab.clients.distance_m[0], lab.clients.distance_m[1], count)
    beta = path_loss_linear(distances, medium.path_loss_exponent, medium.ref_loss_db)
    return FieldResponseChannel.draw(
        rng, count, int(medium.paths), lab.array.wavelength_m, beta, medium.rician_k
    )
