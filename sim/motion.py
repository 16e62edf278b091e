"""Motion timing shared by the stage emulators (and by anyone who wants to predict a move).

A move is a straight line in the plane, run with a trapezoidal speed profile: accelerate at
``accel`` from the entry speed up to the feed (or as high as the distance allows), cruise,
then decelerate to rest at the target. Every block ends at rest (no junction blending), which is
what a point-to-point positioner does anyway.

Time is *model* time on a ``Clock``: real time multiplied by ``scale``, so an emulator with
``scale=50`` finishes a 2 s move in 40 ms of wall time while reporting the same positions a real
controller would at each model instant.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


class Clock:
    """Model time = ``scale`` x wall time since creation (monotonic)."""

    def __init__(self, scale: float = 1.0) -> None:
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"Clock scale must be a finite number > 0 (got {scale!r})")
        self.scale = float(scale)
        self._t0 = time.monotonic()

    def now(self) -> float:
        """Model seconds since the clock started."""
        return (time.monotonic() - self._t0) * self.scale

    def to_real_s(self, model_s: float) -> float:
        """Wall seconds that ``model_s`` model seconds take."""
        return model_s / self.scale

    def real_deadline(self, model_t: float) -> float:
        """The ``time.monotonic()`` value at which model time reaches ``model_t``."""
        return self._t0 + model_t / self.scale

    def sleep(self, model_s: float, cancel: threading.Event | None = None) -> bool:
        """Sleep ``model_s`` model seconds; return False early if ``cancel`` gets set."""
        real = max(0.0, self.to_real_s(model_s))
        if cancel is None:
            time.sleep(real)
            return True
        return not cancel.wait(real)


@dataclass(frozen=True)
class Trapezoid:
    """1-D speed profile over ``distance`` (>= 0): entry speed ``v0``, peak <= ``v_max``, exit 0."""

    distance: float
    v_max: float
    accel: float
    v0: float = 0.0

    def __post_init__(self) -> None:
        if self.distance < 0 or self.v_max <= 0 or self.accel <= 0 or self.v0 < 0:
            raise ValueError(f"Trapezoid needs distance >= 0, v_max > 0, accel > 0, v0 >= 0 (got {self!r})")

    @property
    def _phases(self) -> tuple[float, float, float, float]:
        """(peak speed, accel time, cruise time, decel time)."""
        d, a = self.distance, self.accel
        v0 = min(self.v0, math.sqrt(2 * a * d))  # cannot enter faster than we can stop
        vp = self.v_max if self.v_max > v0 else v0
        d_acc = (vp * vp - v0 * v0) / (2 * a)
        d_dec = vp * vp / (2 * a)
        if d_acc + d_dec > d:  # triangle: never reaches v_max
            vp = math.sqrt((2 * a * d + v0 * v0) / 2)
            vp = max(vp, v0)
            d_acc = (vp * vp - v0 * v0) / (2 * a)
            d_dec = vp * vp / (2 * a)
        t_acc = (vp - v0) / a
        t_dec = vp / a
        t_cruise = max(0.0, (d - d_acc - d_dec) / vp) if vp > 0 else 0.0
        return vp, t_acc, t_cruise, t_dec

    @property
    def duration(self) -> float:
        if self.distance == 0:
            return 0.0
        _, t_acc, t_cruise, t_dec = self._phases
        return t_acc + t_cruise + t_dec

    def at(self, t: float) -> tuple[float, float]:
        """(distance travelled, speed) ``t`` seconds after the start."""
        if self.distance == 0 or t <= 0:
            return 0.0, (self.v0 if self.distance > 0 and t <= 0 else 0.0)
        vp, t_acc, t_cruise, t_dec = self._phases
        a = self.accel
        v0 = min(self.v0, vp)
        if t < t_acc:
            return v0 * t + 0.5 * a * t * t, v0 + a * t
        s = v0 * t_acc + 0.5 * a * t_acc * t_acc
        t -= t_acc
        if t < t_cruise:
            return s + vp * t, vp
        s += vp * t_cruise
        t -= t_cruise
        if t < t_dec:
            return min(self.distance, s + vp * t - 0.5 * a * t * t), vp - a * t
        return self.distance, 0.0


def move_time_s(distance: float, speed: float, accel: float) -> float:
    """Time of a rest-to-rest move of ``distance`` at feed ``speed`` with ``accel`` (any units)."""
    return Trapezoid(abs(distance), speed, accel).duration


@dataclass(frozen=True)
class LinearMove:
    """A straight move in N-D from ``start`` to ``end``, starting at model time ``t0``."""

    start: tuple[float, ...]
    end: tuple[float, ...]
    profile: Trapezoid
    t0: float

    @classmethod
    def plan(
        cls,
        start: tuple[float, ...],
        end: tuple[float, ...],
        speed: float,
        accel: float,
        t0: float,
        v0: float = 0.0,
    ) -> LinearMove:
        distance = math.dist(start, end)
        return cls(tuple(start), tuple(end), Trapezoid(distance, speed, accel, v0), t0)

    @property
    def t_end(self) -> float:
        return self.t0 + self.profile.duration

    def state_at(self, t: float) -> tuple[tuple[float, ...], float]:
        """(position, path speed) at model time ``t`` (clamped to the move)."""
        d = self.profile.distance
        s, v = self.profile.at(t - self.t0)
        if d == 0:
            return self.end, 0.0
        f = s / d
        return tuple(a + f * (b - a) for a, b in zip(self.start, self.end, strict=True)), v

    def stopping(self, t: float, accel: float) -> LinearMove:
        """The move that brakes from ``t`` at ``accel`` along the same line (a feed hold)."""
        pos, v = self.state_at(t)
        d = self.profile.distance
        if v <= 0 or d == 0:
            return LinearMove(pos, pos, Trapezoid(0.0, 1.0, accel), t)
        brake = v * v / (2 * accel)
        remaining = math.dist(pos, self.end)
        brake = min(brake, remaining)
        unit = tuple((b - a) / d for a, b in zip(self.start, self.end, strict=True))
        stop = tuple(p + brake * u for p, u in zip(pos, unit, strict=True))
        # Entering at v with exactly the braking distance gives a pure deceleration.
        return LinearMove(pos, stop, Trapezoid(brake, max(v, 1e-12), accel, v0=v), t)


__all__ = ["Clock", "LinearMove", "Trapezoid", "move_time_s"]
