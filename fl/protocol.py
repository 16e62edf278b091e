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
import os
import queue
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from drivers.errors import ProtocolError

log = logging.getLogger(__name__)

PROTOCOL_NAME = "ma-ota-fl"
PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_FRAMES = 64
COORDINATOR = -1  # the ``node`` field of messages the coordinator sends

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


# Body keys each type must carry (and their JSON types); more keys are allowed.
_REQUIRED: dict[MsgType, dict[str, type | tuple[type, ...]]] = {
    MsgType.HELLO: {"capabilities": dict},
    MsgType.WELCOME: {"run_id": str, "next_round": int},
    MsgType.HEARTBEAT: {},
    MsgType.TIME_REPORT: {"pps_edge_unix_s": (int, float), "radio_time_s": (int, float), "source": str},
    MsgType.PLAN: {
        "version": int,
        "local_steps": int,
        "batch": int,
        "lr": (int, float),
        "clock_hz": (int, float),
        "selected": list,
        "aggregation": str,
        "lora_mode": str,
        "slot_s": (int, float),
        "b_k": list,
        "deadline_s": (int, float),
    },
    MsgType.STATS: {"weight": (int, float), "groups": list, "mean": list, "var": list, "metrics": dict},
    MsgType.SHARED_STATS: {
        "mean": list,
        "var": list,
        "b_k": list,
        "slot_s": (int, float),
        "num_symbols": int,
    },
    MsgType.OTA: {"slot_s": (int, float), "b_k": list, "sent_locally": bool},
    MsgType.DIGITAL: {"weight": (int, float), "purpose": str, "metrics": dict},
    MsgType.RESULT: {"metrics": dict, "version": int},
    MsgType.BYE: {},
    MsgType.ERROR: {"code": str, "reason": str},
}


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
    try:
        header = json.loads(bytes(view[8 : 8 + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(
            f"{where}: safetensors header is not JSON ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(header, dict):
        raise ProtocolError(f"{where}: safetensors header must be an object")
    data = view[8 + header_len :]
    out = FrameTensors()
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ProtocolError(f"{where}: tensor {name!r} has a malformed entry {info!r}")
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ProtocolError(
                f"{where}: tensor {name!r} has dtype {info['dtype']!r}; allowed {sorted(_DTYPES)}"
            )
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ProtocolError(f"{where}: tensor {name!r} has a bad shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ProtocolError(f"{where}: tensor {name!r} has bad data_offsets {offsets!r}")
        begin, end = offsets
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not 0 <= begin <= end <= data.nbytes or end - begin != count * dtype.itemsize:
            raise ProtocolError(
                f"{where}: tensor {name!r} offsets {offsets} do not fit shape {shape} x {dtype} "
                f"in {data.nbytes} data bytes"
            )
        out[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
        out[name].flags.writeable = False
        spans.append((begin, end))
    spans.sort()
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:], strict=False)) or (spans and spans[0][0] != 0):
        raise ProtocolError(f"{where}: tensor data overlaps or leaves holes (offsets {spans})")
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


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are not JSON and poison any sum they enter.
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def decode(frames: list[Any], max_frame_bytes: int | None = None) -> Message:
    """Parse and validate one message; raise ``ProtocolError`` saying what is wrong."""
    if not frames:
        raise ProtocolError("empty message")
    if len(frames) > MAX_FRAMES + 1:
        raise ProtocolError(f"{len(frames)} frames; at most {MAX_FRAMES} tensor frames are allowed")
    bufs = [_buffer(f) for f in frames]
    if max_frame_bytes is not None:
        for i, b in enumerate(bufs):
            if b.nbytes > max_frame_bytes:
                raise ProtocolError(f"frame {i} is {b.nbytes} bytes, over the cap of {max_frame_bytes}")
    if bufs[0].nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"header frame is {bufs[0].nbytes} bytes, over {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(bufs[0]).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"header frame is not UTF-8 JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    if header.get("proto") != PROTOCOL_NAME:
        raise ProtocolError(f"proto is {header.get('proto')!r}; expected {PROTOCOL_NAME!r}")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {header.get('v')!r} is not supported (this side speaks {PROTOCOL_VERSION})"
        )
    try:
        mtype = MsgType(header.get("type"))
    except ValueError:
        raise ProtocolError(
            f"message type {header.get('type')!r} is unknown; allowed {[t.value for t in MsgType]}"
        ) from None
    rnd, node, body = header.get("round"), header.get("node"), header.get("body")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 0:
        raise ProtocolError(f"{mtype}: round must be an int >= 0 (got {rnd!r})")
    if not isinstance(node, int) or isinstance(node, bool) or node < COORDINATOR:
        raise ProtocolError(f"{mtype}: node must be an int >= {COORDINATOR} (got {node!r})")
    if not isinstance(body, dict):
        raise ProtocolError(f"{mtype}: body must be an object (got {type(body).__name__})")
    for key, kind in _REQUIRED[mtype].items():
        if key not in body:
            raise ProtocolError(f"{mtype}: body lacks the required key {key!r}")
        if not isinstance(body[key], kind) or (kind in (int, (int, float)) and isinstance(body[key], bool)):
            raise ProtocolError(
                f"{mtype}: body[{key!r}] has type {type(body[key]).__name__}, expected {kind}"
            )
    manifest = header.get("manifest")
    if not isinstance(manifest, list) or len(manifest) != len(bufs) - 1:
        raise ProtocolError(f"{mtype}: manifest lists {manifest!r} but {len(bufs) - 1} tensor frames came")
    tensors: dict[str, TensorDict] = {}
    for i, (entry, buf) in enumerate(zip(manifest, bufs[1:], strict=True)):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError(f"{mtype}: manifest entry {i} is malformed: {entry!r}")
        if entry.get("bytes") != buf.nbytes:
            raise ProtocolError(
                f"{mtype}: frame {entry['name']!r} is {buf.nbytes} bytes, manifest says {entry.get('bytes')}"
            )
        tensors[entry["name"]] = frame_to_tensors(buf, f"{mtype} frame {entry['name']!r}")
    return Message(mtype, rnd, node, body, tensors)


# --- the socket thread --------------------------------------------------------------------------
class SocketLoop:
    """Owns one socket on a thread: sends queued messages, receives, heartbeats both ways.

    ROUTER mode (the coordinator) heartbeats every identity in ``peers``; DEALER mode (a node)
    heartbeats its one peer. Inbound messages other than heartbeats go to ``inbox`` as
    ``(identity, Message)``. A malformed or oversized message is logged, counted and dropped.
    A ROUTER send to a peer that is gone puts ``(identity, None)`` in the inbox.
    """

    def __init__(
        self,
        socket: zmq.Socket,
        router: bool,
        heartbeat_s: float,
        sender_node: int,
        max_frame_bytes: int | None = None,
    ) -> None:
        self.socket = socket
        self.router = router
        self.heartbeat_s = heartbeat_s
        self.sender_node = sender_node
        self.max_frame_bytes = max_frame_bytes
        # A pipe wakes the thread the moment something is queued (no busy polling).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.inbox: queue.Queue[tuple[bytes, Message | None]] = queue.Queue()
        self._outbox: queue.Queue[tuple[bytes | None, list[bytes]]] = queue.Queue()
        self.peers: set[bytes] = set()
        self.last_seen: dict[bytes, float] = {}
        self.rejected: list[tuple[bytes, str]] = []
        self._pending: collections.deque[tuple[bytes | None, list[bytes]]] = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zmq-loop", daemon=True)
        self.error: BaseException | None = None

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
            self.error = exc
            log.exception("socket loop failed")

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
                    try:
                        frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._receive(frames)
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

    def _receive(self, frames: list[zmq.Frame]) -> None:
        identity = b""
        peer_key = None
        if self.router:
            identity, frames = frames[0].bytes, frames[1:]
            if frames:
                with contextlib.suppress(zmq.ZMQError):  # no ZAP handler (plain sockets): no key
                    peer_key = frames[0].get("User-Id") or None
        try:
            msg = decode(frames, self.max_frame_bytes)
            msg.peer_key = peer_key
        except ProtocolError as exc:
            log.warning("dropped a malformed message from %r: %s", identity, exc)
            self.rejected.append((identity, str(exc)))
            return
        with self._lock:
            self.last_seen[identity] = time.monotonic()
        if msg.type is not MsgType.HEARTBEAT:
            self.inbox.put((identity, msg))


def node_identity(node: int) -> bytes:
    """The DEALER identity of node ``node``: stable, so a rejoining node is the same peer."""
    return f"node-{int(node)}".encode()
