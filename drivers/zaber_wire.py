"""The Zaber ASCII protocol on the wire, and the owner of a port with Zaber devices on it.

- ``lrc``: the checksum, ``:XX`` after a line, the two's complement of the sum of the bytes between
  the start marker (``/``, ``@``, ``!``) and ``:`` (the manual; the zproto crate's ``Lrc``).
- ``parse_reply`` (``@01 1 07 OK BUSY -- 0``), ``parse_alert`` (``!01 1 IDLE --``) and
  ``parse_info`` (``#01 0 07 cont ...``), verifying a checksum when there is one: ``:XX`` (two hex
  digits) at the end of a line; any other ``:`` is data. ``--`` as a message id is "none".
- A reply too long for one packet ends in a backslash and goes on in ``#.. cont`` info lines; the chain
  joins them into one reply.
- Warning flags: the manual's classes, ``F*`` faults, ``W*`` warnings, ``N*`` notices; ``is_fault``
  is true for every ``F*`` and for ``WL`` (unexpected limit), which all stop motion.
- ``ZaberChain``: one serial port and every device on it (a daisy chain, each device at its own
  address). It runs one command/reply round trip at a time with message ids unique on the chain,
  and hands alerts to the stage at their address. ``drivers.zaber.ZaberStage`` uses it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import serial

from drivers.errors import StageError, StageTimeout
from drivers.serial_link import LineLink, StageLinkError, open_port

log = logging.getLogger(__name__)

MAX_MESSAGE_ID = 99
# a checksum is ':' and two hex digits at the very end of a line; any other ':' is data
_CHECKSUMMED = re.compile(r"^(.*):([0-9A-Fa-f]{2})$", re.DOTALL)
CONTINUED = "\\"  # the last data character of a packet that goes on in a '#.. cont' line
FAULTS = {
    "FF": "critical system error",
    "FN": "peripheral not supported",
    "FZ": "peripheral inactive",
    "FH": "hardware emergency stop, driver disabled",
    "FV": "overvoltage or undervoltage, driver disabled",
    "FO": "driver disabled on start-up or by command",
    "FC": "current inrush error",
    "FM": "motor temperature error",
    "FD": "driver disabled",
    "FQ": "encoder error",
    "FI": "index error",
    "FA": "analog encoder sync error",
    "FR": "overdrive limit exceeded",
    "FS": "stalled and stopped",
    "FB": "stream bounds error",
    "FP": "interpolated path deviation",
    "FE": "limit error",
    "FT": "excessive twist",
    "WL": "unexpected limit trigger",
}
REJECT_REASONS = {
    "AGAIN": "the command cannot run now; send it again",
    "BADAXIS": "the command needs an axis (or that axis does not exist)",
    "BADCOMMAND": "the command or setting is not known",
    "BADDATA": "a value is out of range or malformed",
    "BADMESSAGEID": "the message id is not 0..99",
    "DEVICEONLY": "the command must go to the device (axis 0)",
    "DRIVERDISABLED": "the axis' driver is disabled (FO, FD, FH or FV); motion is refused until it is enabled",
    "INACTIVE": "the axis' peripheral is inactive (FZ); motion is refused",
    "FULL": "the device's buffer is full",
    "LOCKSTEP": "the axis is in lockstep; move the lockstep group instead",
    "NOACCESS": "the command needs a higher access level",
    "PARKED": "the device is parked; unpark it first",
    "STATUSBUSY": "the device is busy",
}


def is_fault(flag: str) -> bool:
    """True for a flag that stops motion and loses the position: every ``F*`` fault, and ``WL``."""
    return len(flag) == 2 and (flag[0] == "F" or flag == "WL")


def fault_meaning(flag: str) -> str:
    return FAULTS.get(flag, "a fault; see the Zaber ASCII manual")


def lrc(text: str) -> str:
    """The checksum of ``text`` (the bytes between ``/``, ``@`` or ``!`` and ``:``), two hex digits."""
    return f"{-sum(text.encode('ascii', errors='replace')) & 0xFF:02X}"


class ChecksumError(ValueError):
    """A line's ``:XX`` does not match its content."""


@dataclass(frozen=True)
class ZaberReply:
    address: int
    axis: int
    message_id: int | None
    flag: str  # OK / RJ
    status: str  # IDLE / BUSY
    warning: str  # most urgent flag, or "--"
    data: str
    checksummed: bool = False  # the line carried a (valid) checksum


@dataclass(frozen=True)
class ZaberInfo:
    """An info line ``#01 0 07 text`` (a reply's continuation when ``text`` starts with ``cont``)."""

    address: int
    axis: int
    message_id: int | None
    data: str
    checksummed: bool = False


@dataclass(frozen=True)
class ZaberAlert:
    address: int
    axis: int
    status: str
    warning: str
    data: str
    checksummed: bool = False


def _unframe(line: str, marker: str) -> tuple[str, bool]:
    """The text of a ``marker`` line without marker and checksum, and whether it had one (verified)."""
    if not line.startswith(marker):
        raise ValueError(f"not a Zaber {'reply' if marker == '@' else 'alert'}: {line!r}")
    match = _CHECKSUMMED.match(line[1:])
    if match is None:
        return line[1:], False
    body, checksum = match.group(1), match.group(2)
    if checksum.upper() != lrc(body):
        raise ChecksumError(f"checksum :{checksum} does not match its line (expected :{lrc(body)})")
    return body, True


def parse_reply(line: str) -> ZaberReply:
    """Parse ``@01 1 07 OK BUSY -- 0[:XX]``; raise ``ChecksumError`` on a bad checksum, ValueError if not a reply."""
    body, checksummed = _unframe(line, "@")
    tokens = body.split()
    try:
        address, axis = int(tokens[0]), int(tokens[1])
        rest = tokens[2:]
        message_id = None
        if rest and rest[0].isdigit():
            message_id = int(rest.pop(0))
        elif rest[:1] == ["--"] and rest[1:2] in (["OK"], ["RJ"]):
            rest.pop(0)  # '--': no message id
        flag, status, warning = rest[0], rest[1], rest[2]
    except (ValueError, IndexError):
        raise ValueError(f"malformed Zaber reply: {line!r}") from None
    if flag not in ("OK", "RJ") or status not in ("IDLE", "BUSY") or len(warning) != 2:
        raise ValueError(f"malformed Zaber reply: {line!r}")
    return ZaberReply(address, axis, message_id, flag, status, warning, " ".join(rest[3:]), checksummed)


def parse_info(line: str) -> ZaberInfo:
    """Parse ``#01 0[ 07] text[:XX]``; raise ``ChecksumError`` or ValueError like ``parse_reply``."""
    body, checksummed = _unframe(line, "#")
    tokens = body.split()
    try:
        address, axis = int(tokens[0]), int(tokens[1])
    except (ValueError, IndexError):
        raise ValueError(f"malformed Zaber info line: {line!r}") from None
    rest = tokens[2:]
    message_id = int(rest.pop(0)) if rest and rest[0].isdigit() else None
    return ZaberInfo(address, axis, message_id, " ".join(rest), checksummed)


def parse_alert(line: str) -> ZaberAlert:
    """Parse ``!01 1 IDLE --[ data][:XX]``; raise ``ChecksumError`` or ValueError like ``parse_reply``."""
    body, checksummed = _unframe(line, "!")
    tokens = body.split()
    try:
        address, axis, status, warning = int(tokens[0]), int(tokens[1]), tokens[2], tokens[3]
    except (ValueError, IndexError):
        raise ValueError(f"malformed Zaber alert: {line!r}") from None
    if status not in ("IDLE", "BUSY") or len(warning) != 2:
        raise ValueError(f"malformed Zaber alert: {line!r}")
    return ZaberAlert(address, axis, status, warning, " ".join(tokens[4:]), checksummed)


class ZaberChain:
    """The owner of one serial port and every Zaber device on it (a daisy chain).

    ``ZaberChain.shared(port)`` returns the chain already open on ``port`` (the same cable, see
    ``port_key``) or opens it; each user calls ``release()`` once, and the last one
    closes the port. ``request`` runs one command/reply round trip at a time under the chain's
    lock, with message ids unique on the chain, so stages at different addresses can poll and
    move concurrently. Alerts are handed to the listener registered for their address.
    """

    _registry: dict[str, ZaberChain] = {}
    _registry_lock = threading.Lock()

    def __init__(self, port: str | serial.SerialBase, baudrate: int = 115200) -> None:
        self.portstr = port if isinstance(port, str) else str(getattr(port, "portstr", None) or port)
        self.link = LineLink(open_port(port, baudrate=baudrate), name=self.portstr)
        self.dead = False  # the link failed: the next ``shared`` opens the port afresh
        self.checksummed: set[int] = set()  # addresses whose replies must carry a checksum
        self.alerts: deque[ZaberAlert] = deque(maxlen=100)
        self._listeners: dict[int, Callable[[ZaberAlert], None]] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self._users = 0
        self._key: str | None = None

    @classmethod
    def shared(cls, port: str | serial.SerialBase, baudrate: int = 115200) -> ZaberChain:
        key = cls.port_key(port)
        with cls._registry_lock:
            chain = cls._registry.get(key)
            if chain is None or chain.dead or chain.link.closed:
                chain = cls(port, baudrate)
                chain._key = key
                cls._registry[key] = chain
            chain._users += 1
            return chain

    @staticmethod
    def port_key(port: str | serial.SerialBase) -> str:
        """What makes two ports the same cable: a URL without its ``?options``, a device path with
        its links resolved (``/dev/serial/by-id/...`` is ``/dev/ttyUSB0``), or the port object itself."""
        if not isinstance(port, str):
            return f"<port object {id(port):#x}>"
        if "://" in port:
            return port.split("?", 1)[0]
        return os.path.realpath(port) if port.startswith("/") else port

    def acquire(self) -> ZaberChain:
        """One more user of this chain (``release()`` once when done)."""
        with self._registry_lock:
            self._users += 1
        return self

    def release(self) -> None:
        """One user is done; the last closes the port."""
        with self._registry_lock:
            self._users -= 1
            if self._users > 0:
                return
            if self._key is not None and self._registry.get(self._key) is self:
                del self._registry[self._key]
        self.link.close()

    def attach(self, address: int, on_alert: Callable[[ZaberAlert], None], who: str) -> bool:
        """Register the stage at ``address``; return True if it is the chain's first user."""
        with self._lock:
            if address in self._listeners:
                raise StageError(
                    f"{who}: address {address} on {self.portstr} is already served by another open stage; "
                    "close it first, or give each stage its own zaber_address"
                )
            self._listeners[address] = on_alert
            return len(self._listeners) == 1

    def detach(self, address: int) -> None:
        with self._lock:
            self._listeners.pop(address, None)

    def clear_input(self) -> None:
        with self._lock:
            self.link.clear_input()

    def request(
        self,
        address: int,
        axis: int,
        text: str,
        timeout_s: float,
        who: str,
        checksum: bool = True,
        on_sent: Callable[[str], None] | None = None,
    ) -> tuple[ZaberReply, list[str]]:
        """Send ``/<address> <axis> <id> <text>[:XX]``; return its reply and any garbled lines seen."""
        replies, garbage = self._round_trip(address, axis, text, timeout_s, who, checksum, on_sent, want=1)
        return replies[0], garbage

    def request_all(
        self,
        axis: int,
        text: str,
        timeout_s: float,
        who: str,
        checksum: bool = True,
        expected: int | None = None,
    ) -> tuple[list[ZaberReply], list[str]]:
        """Broadcast ``/0 <axis> <id> <text>``: every device answers. Collect the replies until
        ``expected`` have come, or until ``timeout_s`` when the number of devices is not known."""
        return self._round_trip(0, axis, text, timeout_s, who, checksum, None, want=expected)

    def _round_trip(
        self,
        address: int,
        axis: int,
        text: str,
        timeout_s: float,
        who: str,
        checksum: bool,
        on_sent: Callable[[str], None] | None,
        want: int | None,
    ) -> tuple[list[ZaberReply], list[str]]:
        with self._lock:
            self._next_id = (self._next_id + 1) % (MAX_MESSAGE_ID + 1)
            msg_id = self._next_id
            body = f"{address} {axis} {msg_id:02d} {text}".rstrip()
            line = f"/{body}:{lrc(body)}" if checksum else f"/{body}"
            if on_sent is not None:
                on_sent(line)
            garbage: list[str] = []
            replies: list[ZaberReply] = []
            try:
                self.link.write_line(line)
                deadline = time.monotonic() + timeout_s
                while want is None or len(replies) < want:
                    left = deadline - time.monotonic()
                    raw = self.link.read_line(max(0.0, left)) if left > 0 else None
                    if raw is None:
                        if want is None and replies:
                            break  # a broadcast: whoever answered in time
                        raise StageTimeout(f"{who}: no reply to {line!r} within {timeout_s:g} s")
                    reply = self._classify(raw, line, who, garbage)
                    if reply is None or reply.message_id != msg_id or address not in (0, reply.address):
                        continue
                    replies.append(self._continued(reply, line, who, garbage, deadline))
                return replies, garbage
            except StageLinkError:
                self.dead = True
                raise

    def _continued(
        self, reply: ZaberReply, line: str, who: str, garbage: list[str], deadline: float
    ) -> ZaberReply:
        """The whole reply: a packet ending in ``\\`` goes on in ``#aa x [id] cont ...`` lines."""
        while reply.data.endswith(CONTINUED):
            left = deadline - time.monotonic()
            raw = self.link.read_line(max(0.0, left)) if left > 0 else None
            if raw is None:
                raise StageTimeout(f"{who}: the reply to {line!r} was cut off after {reply.data!r}")
            if not raw.startswith("#"):
                self._classify(raw, line, who, garbage)
                continue
            info = self._info(raw, line, who, garbage)
            if info is None or info.address != reply.address or not info.data.startswith("cont"):
                continue
            if info.message_id not in (None, reply.message_id):
                continue
            more = info.data.removeprefix("cont").strip()
            reply = dataclasses.replace(reply, data=f"{reply.data[:-1].rstrip()} {more}".strip())
        return reply

    def _info(self, raw: str, line: str, who: str, garbage: list[str]) -> ZaberInfo | None:
        """An info line, checksum checked (a corrupted one is noise: kept as garbage)."""
        try:
            info = parse_info(raw)
        except (ChecksumError, ValueError) as exc:
            log.warning("%s: bad info line %r (%s)", who, raw, exc)
            garbage.append(raw)
            return None
        if info.address in self.checksummed and not info.checksummed:
            log.warning("%s: info line %r without a checksum although comm.checksum is 1", who, raw)
            garbage.append(raw)
            return None
        return info

    def _classify(self, raw: str, line: str, who: str, garbage: list[str]) -> ZaberReply | None:
        """A reply, or None after dealing with an info line, an alert or noise."""
        if not raw.strip():
            return None
        if raw.startswith("#"):
            self._info(raw, line, who, garbage)  # checked, but not a reply
            return None
        try:
            if raw.startswith("!"):
                self._alert(parse_alert(raw))
                return None
            reply = parse_reply(raw)
        except ChecksumError as exc:
            raise StageError(
                f"{who}: line {raw!r} while waiting for the reply to {line!r} fails its checksum ({exc}); "
                "the link is noisy: the command's outcome is unknown"
            ) from None
        except ValueError:
            log.warning("%s: garbled line %r", who, raw)
            garbage.append(raw)
            return None
        if reply.address in self.checksummed and not reply.checksummed:
            raise StageError(
                f"{who}: reply {raw!r} to {line!r} carries no checksum although comm.checksum is 1; "
                "the link is noisy or the device was reconfigured"
            )
        return reply

    def _alert(self, alert: ZaberAlert) -> None:
        if alert.address in self.checksummed and not alert.checksummed:
            log.warning("%s: alert %r without a checksum: ignored", self.portstr, alert)
            return
        self.alerts.append(alert)
        listener = self._listeners.get(alert.address)
        if listener is not None:
            listener(alert)


class ChainShare:
    """One user's share of a chain, closable like a link: ``close()`` releases it, once."""

    def __init__(self, chain: ZaberChain) -> None:
        self.chain = chain
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.chain.release()


__all__ = [
    "FAULTS",
    "MAX_MESSAGE_ID",
    "REJECT_REASONS",
    "ChainShare",
    "ChecksumError",
    "ZaberAlert",
    "ZaberChain",
    "ZaberInfo",
    "ZaberReply",
    "fault_meaning",
    "is_fault",
    "lrc",
    "parse_alert",
    "parse_info",
    "parse_reply",
]
