"""Who gets in, and how much: per-peer rate limits, a bounded inbox, and the refusals' audit.

The socket thread admits a message in this order, each step cheaper than the next: frame count
and total size (no parsing), the peer's token bucket (no parsing), the peer's bound CURVE key,
then the strict decode. A flood from one peer empties that peer's bucket and fills that peer's
share of the inbox; the other peers' messages still go through, so a flood costs its sender, not
the round. Every refusal is counted in ``Audit`` (by peer and reason, so a flood is one line
per drain, not one per message) for the owner to write as events.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TokenBucket:
    """``rate_hz`` messages a second on average, up to ``burst`` at once."""

    rate_hz: float
    burst: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens = self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_hz)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class PeerRates:
    """One token bucket per peer; the least recently seen peers are forgotten past ``max_peers``."""

    def __init__(self, rate_hz: float | None, burst: float, max_peers: int = 4096) -> None:
        self.rate_hz = rate_hz
        self.burst = burst
        self.max_peers = max_peers
        self._buckets: collections.OrderedDict[bytes, TokenBucket] = collections.OrderedDict()

    def allow(self, peer: bytes, now: float | None = None) -> bool:
        if self.rate_hz is None:
            return True
        bucket = self._buckets.pop(peer, None) or TokenBucket(self.rate_hz, self.burst)
        self._buckets[peer] = bucket
        while len(self._buckets) > self.max_peers:
            self._buckets.popitem(last=False)
        return bucket.take(time.monotonic() if now is None else now)


class BoundedInbox:
    """A FIFO of ``(peer, message)`` holding at most ``maxsize`` items, ``per_peer`` of them from
    any one peer: a flooding peer fills its own share, never the whole inbox.

    ``get``/``get_nowait``/``empty``/``qsize`` behave as ``queue.Queue``'s; ``put`` never blocks
    and answers whether the item was taken.
    """

    def __init__(self, maxsize: int = 0, per_peer: int = 0) -> None:
        self.maxsize = maxsize
        self.per_peer = per_peer
        self._items: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._count: collections.Counter[bytes] = collections.Counter()
        self._cond = threading.Condition()

    def put(self, item: tuple[bytes, Any], block: bool = False, timeout: float | None = None) -> bool:
        peer = item[0]
        with self._cond:
            if self.maxsize and len(self._items) >= self.maxsize:
                return False
            if self.per_peer and self._count[peer] >= self.per_peer:
                return False
            self._items.append(item)
            self._count[peer] += 1
            self._cond.notify()
            return True

    put_nowait = put

    def get(self, block: bool = True, timeout: float | None = None) -> tuple[bytes, Any]:
        with self._cond:
            if block and not self._items:
                self._cond.wait_for(lambda: bool(self._items), timeout)
            if not self._items:
                raise queue.Empty
            item = self._items.popleft()
            self._count[item[0]] -= 1
            if self._count[item[0]] <= 0:
                del self._count[item[0]]
            return item

    def get_nowait(self) -> tuple[bytes, Any]:
        return self.get(block=False)

    def empty(self) -> bool:
        with self._cond:
            return not self._items

    def qsize(self) -> int:
        with self._cond:
            return len(self._items)


class Audit:
    """Refusals counted by (peer, code), with the first reason and the peer's key, until drained.

    Bounded: past ``max_entries`` distinct (peer, code) pairs, further peers count under ``b"*"``.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[bytes, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.totals: collections.Counter[str] = collections.Counter()

    def add(self, peer: bytes, code: str, reason: str, key: str | None = None) -> None:
        with self._lock:
            self.totals[code] += 1
            slot = (peer, code)
            if slot not in self._entries and len(self._entries) >= self.max_entries:
                slot = (b"*", code)
            entry = self._entries.get(slot)
            if entry is None:
                self._entries[slot] = {
                    "identity": slot[0].decode(errors="replace"),
                    "key": key,
                    "code": code,
                    "reason": reason[:500],
                    "count": 1,
                }
            else:
                entry["count"] += 1

    def drain(self) -> list[dict[str, Any]]:
        """The refusals since the last drain, one record per (peer, code)."""
        with self._lock:
            out, self._entries = list(self._entries.values()), {}
        return out
