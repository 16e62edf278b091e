"""What the serial XY stage drivers (``drivers.grbl``, ``drivers.zaber``) share: the ``Positioner``
plumbing around a ``LineLink``.

``SerialStage`` holds the common settings and state, opens the link (closing it again if the
start-up handshake fails, so a failed open leaks no port), runs ``home()``/``move_to()`` on a
thread behind a ``MoveStatus`` (one motion at a time), and implements ``stop()``/``close()`` and
the recovery after a failed command. A driver supplies the protocol: ``_startup``,
``_home_body``, ``_move_job``, ``_halt``, ``_rest_after``, ``position`` and its own commands.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable
from typing import Self

import serial

from drivers.errors import StageError
from drivers.positioner import MoveStatus, StageLimits, StageState, run_in_thread
from drivers.serial_link import LineLink, open_port


class SerialStage(abc.ABC):
    """One antenna on one XY stage behind one serial link (the ``Positioner`` contract)."""

    name: str
    _link: LineLink

    def __init__(
        self,
        port: str | serial.SerialBase,
        limits: StageLimits,
        name: str,
        command_timeout_s: float,
        homing_timeout_s: float,
        settle_s: float,
    ) -> None:
        self.name = name
        self.port_url = port if isinstance(port, str) else str(getattr(port, "portstr", None) or port)
        self._limits = limits
        self.command_timeout_s = command_timeout_s
        self.homing_timeout_s = homing_timeout_s
        self.settle_s = settle_s
        self.homed = False
        self.last_command: str | None = None
        self._state = StageState.UNKNOWN
        self._stop_requested = threading.Event()
        self._move_thread: threading.Thread | None = None
        self._closed = threading.Event()

    def _open(
        self, port: str | serial.SerialBase, startup: Callable[[], None], baudrate: int = 115200
    ) -> None:
        """Open the link, then run ``startup``; if it fails, close the link and re-raise."""
        self._link = LineLink(open_port(port, baudrate=baudrate), name=self.port_url)
        try:
            startup()
        except BaseException:
            self.close()
            raise

    # --- Positioner contract -------------------------------------------------------------------
    @property
    def limits(self) -> StageLimits:
        return self._limits

    @property
    def state(self) -> StageState:
        return self._state

    def home(self) -> MoveStatus:
        self._begin_motion("home")
        status, self._move_thread = run_in_thread(f"{self.name}: home", self._home_body)
        return status

    def move_to(self, xy_m: tuple[float, float], speed_m_s: float | None = None) -> MoveStatus:
        job = self._move_job(xy_m, speed_m_s)  # checks the target and readiness first
        what = f"move to ({xy_m[0]:.4f}, {xy_m[1]:.4f}) m"
        self._begin_motion(what)
        status, self._move_thread = run_in_thread(f"{self.name}: {what}", job)
        return status

    @abc.abstractmethod
    def position(self) -> tuple[float, float]: ...

    def stop(self) -> None:
        """Bring the stage to rest now (the driver's ``_halt``), then let a running motion's thread end
        (waiting up to ``command_timeout_s`` + 1 s); a no-op once closed or disconnected."""
        if self._state == StageState.DISCONNECTED or self._closed.is_set():
            return
        self._stop_requested.set()
        try:
            self._halt()
        finally:
            thread = self._move_thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=self.command_timeout_s + 1.0)
            self._stop_requested.clear()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._link.close()
        self._on_close()
        if self._state != StageState.DISCONNECTED:
            self._state = StageState.UNKNOWN

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- for the drivers -----------------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"{self.name} on {self.port_url}"

    @property
    def _log(self) -> logging.Logger:
        return logging.getLogger(type(self).__module__)  # log as the driver's module

    @property
    def _log_who(self) -> str:
        """How this stage names itself when a recovery fails (each driver keeps its log lines)."""
        return self._where

    def _begin_motion(self, what: str) -> None:
        thread = self._move_thread
        if thread is not None and thread.is_alive():
            raise StageError(f"{self.name}: still moving ({what} refused); wait for it or stop() first")

    def _recover(self, exc: StageError) -> None:
        """After a failed command: bring the stage to rest (``_rest_after``), unless ``stop()`` is
        already doing it or the link is gone; if that fails too, the state is UNKNOWN."""
        if self._stop_requested.is_set() or self._state == StageState.DISCONNECTED:
            return
        try:
            self._rest_after(exc)
        except StageError as again:
            self._log.error("%s: could not bring the stage to rest after %s: %s", self._log_who, exc, again)
            if self._state != StageState.DISCONNECTED:
                self._state = StageState.UNKNOWN

    # --- the protocol, supplied by each driver ---------------------------------------------------
    @abc.abstractmethod
    def _home_body(self) -> None:
        """Home the stage (runs on the motion thread)."""

    @abc.abstractmethod
    def _move_job(self, xy_m: tuple[float, float], speed_m_s: float | None) -> Callable[[], None]:
        """Check the move (raising before anything moves) and return the body that runs it."""

    @abc.abstractmethod
    def _halt(self) -> None:
        """``stop()``'s protocol part: bring the stage to rest now."""

    @abc.abstractmethod
    def _rest_after(self, exc: StageError) -> None:
        """``_recover()``'s protocol part: bring the stage to rest after ``exc``."""

    def _on_close(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Called once the link is closed (wake anything waiting on it)."""


__all__ = ["SerialStage"]
