"""The FL wire protocol: versioned messages, a JSON header frame, then safetensors tensor frames.

A message on the wire is ``[header, frame_1, ..., frame_n]`` (a ROUTER adds the peer identity in
front). The header is UTF-8 JSON::

    {"proto": "ma-ota-fl", "v": 1, "type": "plan", "round": 3, "node": 2,
     "body": {...}, "manifest": [{"name": "adapter", "bytes": 123456}]}

Each tensor frame is one safetensors file (``build_frame``, one copy of the data; any safetensors
library reads it, and ``frame_to_tensors`` reads the library's files); the manifest names them
in order. Nothing is ever unpickled: the header is JSON and the frames are parsed by a strict
safetensors reader here that maps tensors straight onto the received buffer (no copy), checking
every dtype, shape and offset first. Anything malformed raises ``ProtocolError``.

``SocketLoop`` owns one ZeroMQ socket on its own thread: it sends queued messages, decodes what
arrives, and sends and tracks heartbeats, so a busy training loop can never starve them.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import json
import logging
import math
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from drivers.errors import ProtocolError
from fl.admission import Audit, BoundedInbox, PeerRates
from fl.messages import (
    MAX_HEADER_BYTES,
    check_body,
    load_json,
    message_size_problem,
)

log = logging.getLogger(__name__)

PROTOCOL_NAME = "ma-ota-fl"
PROTOCOL_VERSION = 1
COORDINATOR = -1  # the ``node`` field of messages the coordinator sends
MAX_NODE = 1_000_000
MAX_ROUND = 10_000_000

TensorDict = dict[str, np.ndarray]


class MsgType(enum.StrEnum):
    HELLO = "hello"  # node -> coordinator: capabilities
    WELCOME = "welcome"  # coordinator -> node: admitted, run id, next round
    HEARTBEAT = "heartbeat"  # both ways, from the SocketLoop thread
    TIME_REPORT = "time_report"  # node -> coordinator: radio time at a PPS edge
    PLAN = "plan"  # coordinator -> node: the round plan + global adapter
    STATS = "stats"  # node -> coordinator: per-group mean/var of its update, train metrics
    SHARED_STATS = "shared_stats"  # coordinator -> node: shared mean/var, b_k, slot time
    OTA = "ota"  # node -> coordinator: the OTA-slot burst (or "sent on my own radio")
    DIGITAL = "digital"  # node -> coordinator: the update itself (fallback / NMSE reference)
    RESULT = "result"  # coordinator -> node: the round's outcome
    BYE = "bye"  # either way: leaving
    ERROR = "error"  # coordinator -> node: your message was refused (code, reason)


@dataclass
class Message:
    type: MsgType
    round: int = 0
    node: int = COORDINATOR
    body: dict[str, Any] = field(default_factory=dict)
    frames: dict[str, TensorDict] = field(default_factory=dict)  # frame name -> tensors
    peer_key: str | None = None  # receiver side only: the sender's CURVE public key (z85), if any


# --- complex <-> real pairs for frames ----------------------------------------------------------
def complex_to_pairs(x: np.ndarray) -> np.ndarray:
    """(n,) complex -> (n, 2) float32 [I, Q]: safetensors has no complex dtype."""
    x = np.asarray(x)
    return np.stack([x.real, x.imag], axis=-1).astype(np.float32)


def pairs_to_complex(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ProtocolError(f"symbol frame must be (n, 2) [I, Q] (got shape {x.shape})")
    return x[:, 0].astype(np.float64) + 1j * x[:, 1].astype(np.float64)


# --- safetensors frames -------------------------------------------------------------------------
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES: dict[np.dtype, str] = {v: k for k, v in _DTYPES.items()}


class FrameTensors(dict):
    """Tensors that are read-only views of one safetensors frame: sending them again is free.

    ``build_frame`` and ``frame_to_tensors`` return these, so a received adapter, or the global
    adapter broadcast to every node, is encoded once (not once per send).
    """

    frame: bytes | bytearray | memoryview | None = None
    _views: dict[str, np.ndarray]

    def intact(self) -> bool:
        views = getattr(self, "_views", None)
        return (
            self.frame is not None
            and views is not None
            and len(views) == len(self)
            and all(self.get(k) is v for k, v in views.items())
        )


def _attach(out: FrameTensors, frame: bytes | bytearray | memoryview) -> FrameTensors:
    out.frame = frame
    out._views = dict(out)
    return out


def build_frame(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> FrameTensors:
    """Write ``tensors`` as one safetensors file with a single copy of the data (no library
    round trip through per-tensor ``bytes``); the result's values are views of the frame."""
    arrays = {}
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, arr in tensors.items():
        a = np.asarray(arr)
        if a.dtype.kind == "c":
            raise ProtocolError(f"tensor {name!r} is complex: send complex_to_pairs(x) instead")
        code = _CODES.get(a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype)
        if code is None:
            raise ProtocolError(f"tensor {name!r} has dtype {a.dtype}; allowed {sorted(_DTYPES)}")
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        arrays[name] = a
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the reference writer does
    buf = np.empty(8 + len(text) + offset, dtype=np.uint8)  # not zero-filled: every byte is written
    buf[:8] = np.frombuffer(struct.pack("<Q", len(text)), dtype=np.uint8)
    buf[8 : 8 + len(text)] = np.frombuffer(text, dtype=np.uint8)
    data = memoryview(buf)[8 + len(text) :]
    out = FrameTensors()
    for name, a in arrays.items():
        begin, end = header[name]["data_offsets"]
        view = np.frombuffer(data[begin:end], dtype=_DTYPES[header[name]["dtype"]]).reshape(a.shape)
        view[...] = a  # the one copy
        out[name] = view
    return _attach(out, memoryview(buf))


def empty_frame(shapes: Mapping[str, tuple[int, ...]], dtype: np.dtype | str = np.float32) -> FrameTensors:
    """A zeroed frame with writable views: compute straight into it, then send it with no copy."""
    return build_frame({n: np.zeros(shape, dtype=dtype) for n, shape in shapes.items()})


def tensors_to_frame(tensors: Mapping[str, np.ndarray]) -> bytes | bytearray | memoryview:
    """One safetensors file holding ``tensors`` (reused as is when they are an intact frame)."""
    if isinstance(tensors, FrameTensors) and tensors.intact():
        assert tensors.frame is not None
        return tensors.frame
    return build_frame(tensors).frame  # type: ignore[return-value]


def frame_to_tensors(buf: bytes | bytearray | memoryview, where: str = "frame") -> FrameTensors:
    """Parse one safetensors frame strictly; tensors are read-only views of ``buf``."""
    view = memoryview(buf).cast("B")
    total = view.nbytes
    if total < 8:
        raise ProtocolError(f"{where}: {total} bytes is too short for a safetensors frame")
    (header_len,) = struct.unpack("<Q", view[:8])
    if header_len > min(MAX_HEADER_BYTES, total - 8):
        raise ProtocolError(f"{where}: safetensors header length {header_len} exceeds the frame")
    header = load_json(view[8 : 8 + header_len], f"{where}: the safetensors header")
    if not isinstance(header, dict):
        raise ProtocolError(f"{where}: safetensors header must be an object")
    data = view[8 + header_len :]
    out = FrameTensors()
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise ProtocolError(f"{where}: __metadata__ must map names to strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ProtocolError(f"{where}: tensor {name!r:.80} has a malformed entry {info!r:.200}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        dtype = _DTYPES.get(code) if isinstance(code, str) else None
        if dtype is None:
            raise ProtocolError(
                f"{where}: tensor {name!r:.80} has dtype {code!r:.80}; allowed {sorted(_DTYPES)}"
            )
        if not (
            isinstance(shape, list)
            and len(shape) <= 8
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= data.nbytes for d in shape)
        ):
            raise ProtocolError(f"{where}: tensor {name!r:.80} has a bad shape {shape!r:.200}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise ProtocolError(f"{where}: tensor {name!r:.80} has bad data_offsets {offsets!r:.200}")
        begin, end = offsets
        # Python ints: a shape of [2**32, 2**32] cannot wrap around to something that fits.
        nbytes = math.prod(shape) * dtype.itemsize
        if not 0 <= begin <= end <= data.nbytes or end - begin != nbytes:
            raise ProtocolError(
                f"{where}: tensor {name!r:.80} offsets {offsets} do not fit shape {shape} x {dtype} "
                f"in {data.nbytes} data bytes"
            )
        out[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
        out[name].flags.writeable = False
        spans.append((begin, end))
    spans.sort()
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:], strict=False)) or (spans and spans[0][0] != 0):
        raise ProtocolError(f"{where}: tensor data overlaps or leaves holes (offsets {spans[:8]})")
    return _attach(out, buf)


# --- messages -----------------------------------------------------------------------------------
def encode(msg: Message) -> list[Any]:
    """``[header, *tensor frames]`` ready for ``send_multipart``."""
    frames = [tensors_to_frame(t) for t in msg.frames.values()]
    header = {
        "proto": PROTOCOL_NAME,
        "v": PROTOCOL_VERSION,
        "type": str(msg.type),
        "round": int(msg.round),
        "node": int(msg.node),
        "body": msg.body,
        "manifest": [
            {"name": n, "bytes": memoryview(f).nbytes} for n, f in zip(msg.frames, frames, strict=True)
        ],
    }
    return [json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8"), *frames]


def _buffer(frame: Any) -> memoryview:
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    return memoryview(frame)


def decode(
    frames: list[Any], max_frame_bytes: int | None = None, max_total_bytes: int | None = None
) -> Message:
    """Parse and validate one message; raise ``ProtocolError`` saying what is wrong.

    Nothing else escapes: whatever a peer sends, the caller sees a message or a ``ProtocolError``.
    """
    try:
        return _decode(frames, max_frame_bytes, max_total_bytes)
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence, named for the audit
        raise ProtocolError(f"undecodable message ({type(exc).__name__}: {str(exc)[:200]})") from None


def _decode(frames: list[Any], max_frame_bytes: int | None, max_total_bytes: int | None) -> Message:
    bufs = [_buffer(f) for f in frames]
    problem = message_size_problem([b.nbytes for b in bufs], max_frame_bytes, max_total_bytes)
    if problem is not None:
        raise ProtocolError(problem)
    header = load_json(bufs[0], "header frame")
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    if header.get("proto") != PROTOCOL_NAME:
        raise ProtocolError(f"proto is {header.get('proto')!r:.80}; expected {PROTOCOL_NAME!r}")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {header.get('v')!r:.80} is not supported (this side speaks {PROTOCOL_VERSION})"
        )
    kind = header.get("type")
    try:
        mtype = MsgType(kind) if isinstance(kind, str) else None
    except ValueError:
        mtype = None
    if mtype is None:
        raise ProtocolError(f"message type {kind!r:.80} is unknown; allowed {[t.value for t in MsgType]}")
    rnd, node, body = header.get("round"), header.get("node"), header.get("body")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or not 0 <= rnd <= MAX_ROUND:
        raise ProtocolError(f"{mtype}: round must be an int in 0..{MAX_ROUND} (got {rnd!r:.80})")
    if not isinstance(node, int) or isinstance(node, bool) or not COORDINATOR <= node <= MAX_NODE:
        raise ProtocolError(f"{mtype}: node must be an int in {COORDINATOR}..{MAX_NODE} (got {node!r:.80})")
    check_body(mtype.value, body)
    manifest = header.get("manifest")
    if not isinstance(manifest, list) or len(manifest) != len(bufs) - 1:
        raise ProtocolError(
            f"{mtype}: manifest lists {manifest!r:.200} but {len(bufs) - 1} tensor frames came"
        )
    tensors: dict[str, TensorDict] = {}
    for i, (entry, buf) in enumerate(zip(manifest, bufs[1:], strict=True)):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or len(entry["name"]) > 256:
            raise ProtocolError(f"{mtype}: manifest entry {i} is malformed: {entry!r:.200}")
        if entry.get("bytes") != buf.nbytes:
            raise ProtocolError(
                f"{mtype}: frame {entry['name']!r} is {buf.nbytes} bytes, manifest says {entry.get('bytes')!r:.40}"
            )
        if entry["name"] in tensors:
            raise ProtocolError(f"{mtype}: frame {entry['name']!r} comes twice")
        tensors[entry["name"]] = frame_to_tensors(buf, f"{mtype} frame {entry['name']!r}")
    return Message(mtype, rnd, node, body, tensors)


# --- the socket thread --------------------------------------------------------------------------
class SocketLoop:
    """Owns one socket on a thread: sends queued messages, receives, heartbeats both ways.

    ROUTER mode (the coordinator) heartbeats every identity in ``peers``; DEALER mode (a node)
    heartbeats its one peer. Inbound messages other than heartbeats go to ``inbox`` as
    ``(identity, Message)``. A ROUTER send to a peer that is gone puts ``(identity, None)`` there.

    What arrives is admitted in order (``fl.admission``): frame count and total size, the
    sender's rate (``rate_hz`` with ``burst``), the CURVE key its identity is bound to
    (``bound_key(identity)``: a routing id cannot be used with another node's key), then the
    strict decode. A refused message is dropped, counted in ``audit`` and, on a ROUTER, answered
    with an ERROR (except when its sender is over its rate: a flood gets no echo).

    Parameters
    ----------
    socket
        The ROUTER (coordinator) or DEALER (node) socket; this thread alone uses it.
    router
        True for a ROUTER: frames start with the peer's routing id.
    heartbeat_s
        How often to send a heartbeat to every peer.
    sender_node
        The ``node`` field of this side's heartbeats and ERRORs.
    max_frame_bytes
        Largest frame accepted (None: no cap beyond ZeroMQ's MAXMSGSIZE).
    max_total_bytes
        Largest message, all frames together (None: no cap).
    rate_hz
        Messages a second one peer may send, heartbeats included (None: no limit).
    burst
        Messages one peer may send at once above the rate.
    inbox_size
        Messages waiting in ``inbox``, at most (0: no bound).
    inbox_per_peer
        Of which from any one peer, at most (0: no bound).
    bound_key
        ``bound_key(identity)``: the CURVE key (z85) that identity must come with, or None.
    """

    def __init__(
        self,
        socket: zmq.Socket,
        router: bool,
        heartbeat_s: float,
        sender_node: int,
        max_frame_bytes: int | None = None,
        *,
        max_total_bytes: int | None = None,
        rate_hz: float | None = None,
        burst: float = 64.0,
        inbox_size: int = 0,
        inbox_per_peer: int = 0,
        bound_key: Callable[[bytes], str | None] | None = None,
    ) -> None:
        self.socket = socket
        self.router = router
        self.heartbeat_s = heartbeat_s
        self.sender_node = sender_node
        self.max_frame_bytes = max_frame_bytes
        self.max_total_bytes = max_total_bytes
        self.bound_key = bound_key
        # A pipe wakes the thread the moment something is queued (no busy polling).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.inbox = BoundedInbox(inbox_size, inbox_per_peer)
        self.rates = PeerRates(rate_hz, burst)
        self.audit = Audit()
        self._outbox: queue.Queue[tuple[bytes | None, list[bytes]]] = queue.Queue()
        self.peers: set[bytes] = set()
        self.last_seen: dict[bytes, float] = {}
        # The latest refusals (identity, why), for tests and logs; the counts are in ``audit``.
        self.rejected: collections.deque[tuple[bytes, str]] = collections.deque(maxlen=1000)
        self._pending: collections.deque[tuple[bytes | None, list[bytes]]] = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zmq-loop", daemon=True)
        self._last_log: dict[tuple[bytes, str], float] = {}
        self._current: bytes | None = None
        self.error: BaseException | None = None
        self.error_peer: bytes | None = None  # whose message the thread was handling when it died

    def start(self) -> SocketLoop:
        self._thread.start()
        return self

    def send(self, msg: Message, identity: bytes | None = None) -> None:
        self.send_frames(encode(msg), identity)

    def send_frames(self, frames: list[Any], identity: bytes | None = None) -> None:
        self._outbox.put((identity, frames))
        self._wake()

    def _wake(self) -> None:
        # A full pipe means the thread is awake anyway; a closed one means it is gone.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def seen_within(self, identity: bytes, window_s: float) -> bool:
        with self._lock:
            t = self.last_seen.get(identity)
        return t is not None and time.monotonic() - t <= window_s

    def close(self, linger_s: float = 0.5) -> None:
        """Flush what is queued (up to ``linger_s``), stop the thread, close the socket."""
        deadline = time.monotonic() + linger_s
        while (
            (not self._outbox.empty() or self._pending)
            and time.monotonic() < deadline
            and self._thread.is_alive()
        ):
            time.sleep(0.005)
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.socket.close(linger=int(linger_s * 1000))
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - reported to the owner through .error
            peer = self._current
            if peer is not None:
                exc.add_note(f"while handling a message from {peer!r}")
            self.error_peer = peer
            self.error = exc
            log.exception("socket loop failed (last peer %r)", peer)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_beat = time.monotonic()
        beat = encode(Message(MsgType.HEARTBEAT, 0, self.sender_node))
        while not self._stop.is_set():
            wait_s = max(0.0, next_beat - time.monotonic())
            if self._pending:
                wait_s = min(wait_s, 0.01)  # a blocked send is retried soon
            events = dict(poller.poll(int(wait_s * 1000) + 1))
            if events.get(self._wake_r):
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 65536)
            if events.get(self.socket):
                for _ in range(256):  # drain, but let sends and beats run too
                    if not self._recv_one():
                        break
            while True:
                try:
                    self._pending.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            # In order; a DEALER with no peer (coordinator gone) answers EAGAIN: keep and retry.
            while self._pending and self._send(*self._pending[0]):
                self._pending.popleft()
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                targets = list(self.peers) if self.router else [None]
                for identity in targets:
                    self._send(identity, beat)  # a beat that cannot go now is simply dropped

    def _send(self, identity: bytes | None, frames: list[bytes]) -> bool:
        """Never blocks. True: sent (or the peer is gone for good); False: try again later."""
        try:
            if self.router:
                self.socket.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
            else:
                self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH and identity is not None:
                self.peers.discard(identity)
                self.inbox.put((identity, None))
                return True
            if exc.errno == zmq.EAGAIN:
                return False
            raise

    def _recv_one(self) -> bool:
        """Take one message off the socket (False: none is waiting). A ROUTER reads the sender's
        routing id first; a sender over its rate has the rest of its message read and dropped
        as plain bytes, so a flood costs a counter per message, not a parse."""
        sock = self.socket
        if not self.router:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return False
            self._receive(b"", frames)
            return True
        try:
            identity = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return False
        # The parts of a message arrive together: what follows the routing id is there now.
        if not self.rates.allow(identity):
            while sock.rcvmore:
                sock.recv(zmq.NOBLOCK)
            self._refuse(identity, None, "rate_limited", "over the per-peer message rate", False)
            return True
        self._receive(identity, sock.recv_multipart(zmq.NOBLOCK, copy=False) if sock.rcvmore else [])
        return True

    def _receive(self, identity: bytes, frames: list[zmq.Frame]) -> None:
        peer_key = None
        if frames:
            with contextlib.suppress(zmq.ZMQError):  # no ZAP handler (plain sockets): no key
                peer_key = frames[0].get("User-Id") or None
        self._current = identity
        try:
            self._admit(identity, peer_key, frames)
        except _Refused as refused:
            self._refuse(identity, peer_key, refused.code, refused.reason, refused.reply)
        except Exception as exc:  # noqa: BLE001 - no message may end the socket thread
            self._refuse(identity, peer_key, "malformed", f"{type(exc).__name__}: {exc}", True)
        finally:
            self._current = None

    def _admit(self, identity: bytes, peer_key: str | None, frames: list[zmq.Frame]) -> None:
        problem = message_size_problem(
            [_buffer(f).nbytes for f in frames], self.max_frame_bytes, self.max_total_bytes
        )
        if problem is not None:
            raise _Refused("too_big", problem)
        if self.bound_key is not None:
            want = self.bound_key(identity)
            if want is not None and peer_key != want:
                # The routing id of one node with another key: a takeover attempt.
                raise _Refused(
                    "identity_key_mismatch",
                    f"identity {identity!r:.40} belongs to another CURVE key (this one is {peer_key})",
                )
        try:
            msg = decode(frames, self.max_frame_bytes, self.max_total_bytes)
        except ProtocolError as exc:
            raise _Refused("malformed", str(exc)) from None
        msg.peer_key = peer_key
        with self._lock:
            self.last_seen[identity] = time.monotonic()
        if msg.type is not MsgType.HEARTBEAT and not self.inbox.put((identity, msg)):
            raise _Refused("inbox_full", "this peer's share of the inbox is full", reply=False)

    def _refuse(self, identity: bytes, key: str | None, code: str, reason: str, reply: bool) -> None:
        self.rejected.append((identity, reason))
        self.audit.add(identity, code, reason, key)
        # One log line per peer and reason per second: a flood must not flood the log too.
        now = time.monotonic()
        if now - self._last_log.get((identity, code), -1e9) >= 1.0:
            if len(self._last_log) > 4096:
                self._last_log.clear()
            self._last_log[(identity, code)] = now
            log.warning("refused a message from %r (%s): %s", identity, code, reason[:300])
        if reply and self.router:
            err = Message(MsgType.ERROR, 0, self.sender_node, {"code": code, "reason": reason[:1000]})
            self._send(identity, encode(err))


class _Refused(Exception):
    def __init__(self, code: str, reason: str, reply: bool = True) -> None:
        super().__init__(reason)
        self.code, self.reason, self.reply = code, reason, reply


def node_identity(node: int) -> bytes:
    """The DEALER identity of node ``node``: stable, so a rejoining node is the same peer."""
    return f"node-{int(node)}".encode()
