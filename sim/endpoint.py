"""The byte side of an emulated stage controller, apart from any transport.

The emulators (``sim.grbl_device``, ``sim.zaber_device``) build on ``EmulatorEndpoint``; the
transports (``sim.serial_url``: pyserial URLs and a TCP server) import the emulators and hand
bytes to them. This module knows neither, so the imports run one way.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from sim.motion import Clock


class EmulatedDevice(Protocol):
    connected: bool

    def write(self, data: bytes) -> int: ...
    def read(self, size: int = 1, timeout_s: float | None = 0.0) -> bytes: ...
    def in_waiting(self) -> int: ...
    def reset_input(self) -> None: ...
    def power_cycle(self) -> None: ...


class LinkDown(ConnectionError):
    """The emulated cable is unplugged (a fault): reads and writes fail."""


@dataclass
class Faults:
    """Faults to inject into an emulator, switched on per test; each is used up when it fires."""

    drop_replies: int = 0  # swallow the next N replies (GRBL: 'ok'; Zaber: the '@' reply)
    garbage: bytes = b""  # sent once, on a line of its own, ahead of the next reply
    slow_reply_s: float = 0.0  # hold the next `slow_replies` replies back this long (wall s)
    slow_replies: int = 0
    disconnect_at: float | None = None  # unplug at this fraction of the next move
    alarm_at: float | None = None  # GRBL: ALARM:1 (hard limit); Zaber: stall (FS) at this fraction
    homing_never_ends: bool = False


class EmulatorEndpoint:
    """The byte side of an emulated controller.

    Replies are queued with the wall time they may leave (a slow-reply fault delays them). There
    is no thread: every call first brings the model to the clock's present (``_advance``) and a
    blocked reader sleeps until the next scheduled event (``_next_model_event``).
    """

    resets_on_open = False  # True where opening the port resets the board (Arduino DTR)

    def __init__(self, name: str, time_scale: float) -> None:
        self.name = name
        self.clock = Clock(time_scale)
        self.faults = Faults()
        self.connected = True
        self.lines_received: list[str] = []  # every line the host sent, for tests
        self._cond = threading.Condition(threading.RLock())
        self._out: deque[tuple[float, bytes]] = deque()
        # The device says nothing before this wall time (a firmware busy in a delay after a message).
        self._silent_until = 0.0

    # subclasses provide these three
    def _advance(self) -> None:
        raise NotImplementedError

    def _receive(self, data: bytes) -> None:
        raise NotImplementedError

    def _next_model_event(self) -> float | None:
        return None

    def write(self, data: bytes) -> int:
        with self._cond:
            self._check_link()
            self._advance()
            self._receive(bytes(data))
            self._cond.notify_all()
            return len(data)

    def read(self, size: int = 1, timeout_s: float | None = 0.0) -> bytes:
        """Up to ``size`` bytes; wait up to ``timeout_s`` (None: forever) for the first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while True:
                self._check_link()
                self._advance()
                data = self._take(size)
                if data:
                    return data
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return b""
                wake = [self._out[0][0]] if self._out else []
                model_t = self._next_model_event()
                if model_t is not None and model_t != float("inf"):
                    wake.append(self.clock.real_deadline(model_t))
                wait = None if deadline is None else deadline - now
                if wake:
                    until = max(0.0005, min(wake) - now)
                    wait = until if wait is None else min(wait, until)
                self._cond.wait(wait)

    def in_waiting(self) -> int:
        with self._cond:
            self._check_link()
            self._advance()
            now = time.monotonic()
            return sum(len(b) for t, b in self._out if t <= now)

    def reset_input(self) -> None:
        """Drop replies already sent but not read (the host flushed its input buffer)."""
        with self._cond:
            now = time.monotonic()
            self._out = deque((t, b) for t, b in self._out if t > now)

    def unplug(self) -> None:
        with self._cond:
            self.connected = False
            self._cond.notify_all()

    def _check_link(self) -> None:
        if not self.connected:
            raise LinkDown(f"{self.name}: emulated cable unplugged")

    def _take(self, size: int) -> bytes:
        now = time.monotonic()
        chunks = bytearray()
        while self._out and self._out[0][0] <= now and len(chunks) < size:
            t, b = self._out.popleft()
            room = size - len(chunks)
            chunks += b[:room]
            if len(b) > room:
                self._out.appendleft((t, b[room:]))
        return bytes(chunks)

    def _send(self, line: str, reply: bool = True) -> None:
        """Queue one line (CR LF added). ``reply``: subject to the slow/garbage faults."""
        release = max(time.monotonic(), self._silent_until)
        f = self.faults
        if reply and f.slow_replies > 0:
            f.slow_replies -= 1
            release += f.slow_reply_s
        if reply and f.garbage:
            self._out.append((release, f.garbage + b"\r\n"))
            f.garbage = b""
        self._out.append((release, line.encode("ascii") + b"\r\n"))

    def _drop_reply(self) -> bool:
        """True if the lost-reply fault eats this reply."""
        if self.faults.drop_replies > 0:
            self.faults.drop_replies -= 1
            return True
        return False
