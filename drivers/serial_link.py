"""Line-oriented serial I/O with timeouts, shared by the GRBL and Zaber drivers.

``open_port(url)`` opens any pyserial URL: a device path (``/dev/ttyUSB0``), ``socket://host:port``,
or the emulators' ``grblsim://name`` / ``zabersim://name`` (their handler is installed on demand).
A device path is opened with an exclusive lock, and a port another process holds is refused
naming that process (``port_holders``: the OS's list of open files), instead of two programs
reading one controller's replies. DTR and RTS are set low before the port opens (``hold_dtr``),
so a board that resets on DTR (an Arduino running GRBL) keeps its state where the adapter and OS
allow; whether it reset anyway is the driver's to see (its start-up banner).

``LineLink`` reads whole lines (``\\r\\n`` or ``\\n``) with a deadline and writes lines or raw bytes
under a lock, so a real-time byte (a feed hold) can go out while another thread waits for a reply.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time
from pathlib import Path

import serial

from drivers.errors import StageError

EMULATOR_SCHEMES = ("grblsim://", "zabersim://")
MAX_LINE_BYTES = 4096  # a reply longer than this is noise, not a reply


class StageLinkError(StageError):
    """The serial link failed (unplugged, port vanished, socket closed)."""


def port_holders(device: str) -> list[tuple[int, str]]:
    """The other processes that have ``device`` open, as (pid, command line), where the OS tells.

    Reads ``/proc/<pid>/fd`` (Linux); processes of other users whose fds cannot be read, and
    systems without ``/proc``, are not seen, so an empty list is no proof that the port is free.
    """
    try:
        target = os.path.realpath(device)
    except OSError:
        return []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    found: list[tuple[int, str]] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) != target:
                    continue
            except OSError:
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
                cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmdline = ""
            found.append((int(entry.name), cmdline or "?"))
            break
    return sorted(found)


def _busy_error(url: str, holders: list[tuple[int, str]], why: str = "") -> StageLinkError:
    if holders:
        who = "; ".join(f"pid {pid} ({cmd[:120]})" for pid, cmd in holders)
        return StageLinkError(
            f"stage port {url!r} is busy: held by {who}; a running experiment holds its stages until it "
            "ends (testbed stop RUN_DIR), otherwise close that program"
        )
    return StageLinkError(
        f"stage port {url!r} is busy: another process holds an exclusive lock on it ({why}); the OS "
        "does not say which here (try `fuser` or `lsof` on it as root)"
    )


def open_port(
    url: str | serial.SerialBase,
    baudrate: int = 115200,
    read_timeout_s: float = 0.05,
    *,
    hold_dtr: bool = True,
) -> serial.SerialBase:
    """Open ``url`` at ``baudrate`` 8N1; raise ``StageLinkError`` naming the port if it fails.

    ``hold_dtr``: set DTR and RTS low before opening, so an Arduino is not reset by the open (pyserial
    applies them as the port opens; some USB adapters and OS drivers still pulse DTR in open(2)).
    A device path (not a ``scheme://`` URL) that another process has open is refused, naming it.
    An object that is already a port (anything with ``read``/``write``, e.g. a test transcript)
    is used as it is.
    """
    if not isinstance(url, str):
        if not (hasattr(url, "read") and hasattr(url, "write")):
            raise StageLinkError(f"stage port must be a pyserial URL or an open port (got {url!r})")
        return url
    if url.lower().startswith(EMULATOR_SCHEMES):
        # up a floor: the emulators' URL schemes are registered with pyserial on first use
        importlib.import_module("sim.serial_url").install()
    is_device = "://" not in url
    if is_device:
        holders = port_holders(url)
        if holders:
            raise _busy_error(url, holders)
    try:
        port = serial.serial_for_url(
            url,
            baudrate=baudrate,
            bytesize=8,
            parity="N",
            stopbits=1,
            timeout=read_timeout_s,
            write_timeout=2.0,
            do_not_open=True,
            # an exclusive lock (flock) on a device path: a second opener fails instead of sharing
            **({"exclusive": True} if is_device else {}),
        )
        if hold_dtr:
            port.dtr = False
            port.rts = False
        port.open()
        return port
    except (serial.SerialException, ValueError, OSError) as exc:
        if is_device and "lock" in str(exc).lower():
            raise _busy_error(url, port_holders(url), str(exc)) from exc
        raise StageLinkError(f"cannot open stage port {url!r}: {exc}") from exc


class LineLink:
    """Whole lines in, lines or raw bytes out, over one pyserial port."""

    def __init__(self, port: serial.SerialBase, name: str | None = None) -> None:
        self.port = port
        self.name = name or str(getattr(port, "portstr", port))
        self._buf = bytearray()
        self._write_lock = threading.Lock()
        self.closed = False

    def write_line(self, text: str, terminator: bytes = b"\n") -> None:
        self.write_raw(text.encode("ascii") + terminator)

    def write_raw(self, data: bytes) -> None:
        with self._write_lock:
            if self.closed:
                raise StageLinkError(f"{self.name}: port is closed")
            try:
                self.port.write(data)
                self.port.flush()
            except (serial.SerialException, OSError) as exc:
                raise StageLinkError(f"{self.name}: write failed, link lost? ({exc})") from exc

    def read_line(self, timeout_s: float) -> str | None:
        """The next line without its terminator, or None if none completes within ``timeout_s``.

        Bytes that are not ASCII come back as U+FFFD, so noise shows up instead of vanishing.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._split()
            if line is not None:
                return line
            if self.closed:
                raise StageLinkError(f"{self.name}: port is closed")
            if time.monotonic() >= deadline:
                return None
            try:
                waiting = self.port.in_waiting
                chunk = self.port.read(max(1, min(waiting, 4096)))
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                # TypeError/AttributeError: pyserial's posix port raises these when closed under it.
                raise StageLinkError(f"{self.name}: read failed, link lost? ({exc})") from exc
            if chunk:
                self._buf += chunk
                if len(self._buf) > MAX_LINE_BYTES and b"\n" not in self._buf:
                    junk = bytes(self._buf)
                    self._buf.clear()
                    return junk.decode("ascii", errors="replace")

    def _split(self) -> str | None:
        idx = self._buf.find(b"\n")
        if idx < 0:
            return None
        raw = bytes(self._buf[:idx])
        del self._buf[: idx + 1]
        return raw.rstrip(b"\r").decode("ascii", errors="replace")

    def clear_input(self) -> None:
        """Drop buffered and pending input (stale replies)."""
        self._buf.clear()
        with contextlib.suppress(serial.SerialException, OSError):
            self.port.reset_input_buffer()

    def close(self) -> None:
        with self._write_lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(serial.SerialException, OSError):
                self.port.close()


__all__ = ["LineLink", "StageLinkError", "open_port", "port_holders"]
