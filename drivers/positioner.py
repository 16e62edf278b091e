"""The motion-stage contract.

A ``Positioner`` moves one receive antenna in the plane. Positions are metres in the stage's own
frame, (0, 0) being the homed corner; ``testbed`` maps them into the movable-antenna region.
``move_to`` returns at once with a ``MoveStatus`` so several stages can move together; wait on it.
The shape follows bluesky's protocols (set/locate/read/stop with status objects).
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from drivers.errors import StageError, StageLimitError, StageTimeout


class StageState(enum.Enum):
    UNKNOWN = "unknown"  # just opened, not yet read
    IDLE = "idle"
    MOVING = "moving"
    HOMING = "homing"
    HOLD = "hold"
    ALARM = "alarm"  # position unknown or limit hit: needs unlock/home
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class StageLimits:
    """Soft limits enforced in the driver, before any byte leaves."""

    travel_m: tuple[float, float]  # usable travel along X and Y from the homed corner
    max_speed_m_s: float
    accel_m_s2: float

    def contains(self, xy: tuple[float, float], tol_m: float = 1e-9) -> bool:
        return all(-tol_m <= v <= t + tol_m for v, t in zip(xy, self.travel_m, strict=True))

    def move_time_s(self, distance_m: float, speed_m_s: float | None = None) -> float:
        """Rest-to-rest time of a straight move (trapezoid: accel, cruise, decel) - for timeouts."""
        v = self.max_speed_m_s if speed_m_s is None else speed_m_s
        d, a = abs(distance_m), self.accel_m_s2
        if d == 0:
            return 0.0
        if d >= v * v / a:
            return d / v + v / a
        return 2.0 * math.sqrt(d / a)

    def check_move(self, xy_m: tuple[float, float], speed_m_s: float, who: str = "stage") -> None:
        """Raise ``StageLimitError`` naming the broken limit (travel or speed) of a planned move."""
        try:
            ok = len(xy_m) == 2 and all(math.isfinite(float(v)) for v in xy_m)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise StageLimitError(f"{who}: target must be two finite numbers in metres (got {xy_m!r})")
        for axis, v, t in zip("XY", xy_m, self.travel_m, strict=True):
            if not -1e-9 <= v <= t + 1e-9:
                raise StageLimitError(
                    f"{who}: travel limit: {axis}={v:.6g} m is outside [0, {t:g}] m; nothing was sent"
                )
        if not (math.isfinite(speed_m_s) and 0 < speed_m_s <= self.max_speed_m_s * (1 + 1e-9)):
            raise StageLimitError(
                f"{who}: speed limit: {speed_m_s:.6g} m/s is outside (0, {self.max_speed_m_s:g}] m/s; "
                "nothing was sent"
            )


class MoveStatus:
    """A completion handle for a started move (like bluesky's ``Status``).

    The driver calls ``set_finished()`` or ``set_exception()`` from its own thread.
    """

    def __init__(self, description: str = "move") -> None:
        self.description = description
        self._done = threading.Event()
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[MoveStatus], None]] = []
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def success(self) -> bool:
        return self._done.is_set() and self._exception is None

    def exception(self, timeout: float | None = 0.0) -> BaseException | None:
        """The move's error, or None (bluesky's Status signature: waits up to ``timeout`` first)."""
        if timeout is None or timeout > 0:
            self._done.wait(timeout)
        return self._exception

    def set_finished(self) -> None:
        self._finish(None)

    def set_exception(self, exc: BaseException) -> None:
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._exception = exc
            self._done.set()
            callbacks = list(self._callbacks)
        for cb in callbacks:
            cb(self)

    def add_callback(self, cb: Callable[[MoveStatus], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(cb)
                return
        cb(self)

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until the move ends; re-raise its error. Raise ``StageTimeout`` past ``timeout_s``."""
        if not self._done.wait(timeout_s):
            raise StageTimeout(f"{self.description}: not finished after {timeout_s} s")
        if self._exception is not None:
            raise self._exception

    def __repr__(self) -> str:
        # A failed bluesky move prints the status: say why, not where it lives in memory.
        if not self._done.is_set():
            state = "running"
        elif self._exception is None:
            state = "done, success"
        else:
            state = f"FAILED: {type(self._exception).__name__}: {self._exception}"
        return f"<MoveStatus {self.description!r} {state}>"

    @classmethod
    def finished(cls, description: str = "move") -> MoveStatus:
        status = cls(description)
        status.set_finished()
        return status


def run_in_thread(description: str, body: Callable[[], None]) -> tuple[MoveStatus, threading.Thread]:
    """Run ``body`` on a daemon thread; its return finishes the status, its exception fails it."""
    status = MoveStatus(description)

    def run() -> None:
        try:
            body()
        except StageError as exc:
            status.set_exception(exc)
        except Exception as exc:  # unexpected: still finish the status so no waiter hangs
            status.set_exception(StageError(f"{description} failed: {exc!r}"))
        else:
            status.set_finished()

    thread = threading.Thread(target=run, name=description, daemon=True)
    thread.start()
    return status, thread


def wait_all(statuses: list[MoveStatus], timeout_s: float) -> None:
    """Wait for several moves under one deadline; raise the first error met."""
    deadline = time.monotonic() + timeout_s
    for status in statuses:
        status.wait(max(0.0, deadline - time.monotonic()))


@runtime_checkable
class Positioner(Protocol):
    """One XY stage carrying one receive antenna."""

    name: str

    @property
    def limits(self) -> StageLimits: ...

    @property
    def state(self) -> StageState: ...

    def home(self) -> MoveStatus: ...

    def move_to(self, xy_m: tuple[float, float], speed_m_s: float | None = None) -> MoveStatus: ...

    def position(self) -> tuple[float, float]: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


__all__ = [
    "MoveStatus",
    "Positioner",
    "StageError",
    "StageLimits",
    "StageState",
    "run_in_thread",
    "wait_all",
]
