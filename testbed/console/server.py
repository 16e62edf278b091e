"""`testbed serve`'s web server: an index of the folders under a directory and a live page each.

One ``Folder`` entry per run, campaign or compare holds its view (``testbed.console.view``, the
one home of the folding) and, while pages are open, one poller: it refreshes the view from its
tail of ``events.jsonl`` (new complete lines only, never the whole file again) and sends every
open page the same patch of the view's JSON snapshot over server-sent events. Ten pages on one
run share one view and one tail.

Safe by default: a loopback bind checks the Host header (no DNS rebinding); any other bind needs
the token printed at start (``?token=`` once, then a cookie), and answers 403 without it. The
server only reads: it serves its own static files, the views' JSON, and a compare's report
(``compare.md`` and its PNGs). The pages build every element with ``textContent``, and the
Content-Security-Policy forbids inline script.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from testbed.console.folders import ConsoleError, Folder, identify
from testbed.console.view import jsonable, open_view

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"
# How often an open page's poller looks at the file (an os.stat when nothing was appended).
POLL_S = 0.1
# The snapshot's clocks (the phase's elapsed time, heartbeat ages, the status of a run whose
# process died) move without new lines: it is taken again at least this often while pages are open.
TICK_S = 1.0
# A page that has not been sent anything for this long gets a comment line (proxies, dead peers).
KEEPALIVE_S = 15.0
# Patches a slow page may fall behind by before it is dropped (its EventSource reconnects and
# starts again from a fresh snapshot), so a stuck browser never grows the server's memory.
QUEUE_MAX = 32
# How deep under DIR the index looks for runs, campaigns and compares.
SCAN_DEPTH = 3
# The report files a compare page shows (flat names in the compare's own folder).
REPORT_FILE = re.compile(r"^[\w.-]+\.(png|md)$")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


# --- binding -------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8765" -> "::1")."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); a port in use is a ConsoleError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConsoleError(
                f"port {port} on {host} is in use (another server, or an earlier `testbed serve`); "
                "give another with --port, or --port 0 for any free one"
            ) from None
        raise ConsoleError(
            f"cannot listen on {host}:{port}: {exc.strerror}; check --host and --port"
        ) from None
    sock.setblocking(False)
    return sock


# --- JSON ------------------------------------------------------------------------------------------
def patch_of(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What turns ``old`` into ``new``: per key ``{"set": v}``, ``{"append": items}`` for a list
    that only grew, ``{"drop": n, "append": items}`` for a window that slid, ``{"patch": ...}`` for a dict, ``{"del": true}``; unchanged keys are absent.
    (The pages apply it; the folding itself stays in the view.)"""
    out: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            out[key] = {"set": value}
            continue
        before = old[key]
        if before == value:
            continue
        if isinstance(value, list) and isinstance(before, list):
            out[key] = _list_patch(before, value)
        elif isinstance(value, dict) and isinstance(before, dict):
            out[key] = {"patch": patch_of(before, value)}
        else:
            out[key] = {"set": value}
    for key in old.keys() - new.keys():
        out[key] = {"del": True}
    return out


def _list_patch(before: list[Any], value: list[Any]) -> dict[str, Any]:
    """A list that grew (``append``), or a bounded window that slid (``drop`` from the front, then
    ``append``), else the whole list (``set``)."""
    if value[: len(before)] == before:
        return {"append": value[len(before) :]}
    if value:
        for start, item in enumerate(before):
            kept = len(before) - start
            if item == value[0] and before[start:] == value[:kept]:
                return {"drop": start, "append": value[kept:]}
    return {"set": value}


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


# --- one folder: its view and its poller -----------------------------------------------------------
class Entry:
    """A run, campaign or compare: its view, and the pages that follow it."""

    def __init__(self, rel: str, folder: Folder, view: Any) -> None:
        self.rel = rel
        self.folder = folder
        self.view = view
        self.lock = asyncio.Lock()
        self.pages: set[asyncio.Queue[bytes | None]] = set()
        self.state: dict[str, Any] = {}
        self._snapshot: bytes | None = None
        self.task: asyncio.Task[None] | None = None
        self.fresh = False
        self.ticked = 0.0

    async def refresh(self) -> None:
        """Fold what was appended and send the open pages the patch, if the view shows anything
        new or a tick is due. The folding runs in a thread (a long run's first read takes
        seconds); the lock keeps one update at a time, and no page joins between an update and
        its patch."""
        async with self.lock:
            message = await asyncio.to_thread(self._update)
            if message is not None:
                for queue in list(self.pages):
                    self._offer(queue, message)

    def _update(self) -> bytes | None:
        changed = self.view.refresh()
        now = time.monotonic()
        if self.fresh and not changed and now - self.ticked < TICK_S:
            return None
        self.ticked = now
        state = {"rel": self.rel, "view": self.view.to_dict(), "files": self._files()}
        if self.fresh and state == self.state:
            return None
        patch = patch_of(self.state, state) if self.fresh else None
        self.state, self.fresh, self._snapshot = state, True, None
        return _sse("patch", json.dumps(patch)) if patch else None

    def snapshot(self) -> bytes:
        """The current state as a page's first message (encoded once per change, on demand)."""
        if self._snapshot is None:
            self._snapshot = _sse("snapshot", json.dumps(self.state))
        return self._snapshot

    def _files(self) -> list[dict[str, Any]]:
        """A compare's report files (name and modification time), which grow as cells finish."""
        if self.folder.kind != "compare":
            return []
        files = []
        with contextlib.suppress(OSError), os.scandir(self.folder.path) as it:
            for item in it:
                if REPORT_FILE.match(item.name) and item.is_file(follow_symlinks=False):
                    files.append({"name": item.name, "mtime": item.stat().st_mtime})
        return sorted(files, key=lambda f: f["name"])

    def _offer(self, queue: asyncio.Queue[bytes | None], message: bytes) -> None:
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            # Too far behind: end its stream; the browser reconnects and gets a fresh snapshot.
            self.pages.discard(queue)
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            queue.put_nowait(None)

    async def follow(self) -> AsyncIterator[bytes]:
        """A page's stream: the snapshot, then a patch whenever the view changes."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_MAX)
        if not self.fresh:
            await self.refresh()
        try:
            async with self.lock:
                # Under the lock: the next patch is the first one after this snapshot.
                first = self.snapshot()
                self.pages.add(queue)
            if self.task is None or self.task.done():
                self.task = asyncio.create_task(self._poll())
            yield first
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if message is None:
                    return
                yield message
        finally:
            self.pages.discard(queue)

    async def _poll(self) -> None:
        """Refresh while any page is open; stop with the last one."""
        while self.pages:
            try:
                await self.refresh()
            except Exception:
                log.exception("%s: refreshing the view failed", self.folder.path)
            await asyncio.sleep(POLL_S)


# --- every folder under the root -------------------------------------------------------------------
class Catalog:
    """The runs, campaigns and compares under ``root`` (``root`` itself may be one)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: dict[str, Entry] = {}
        # Folders that look like one of the three but cannot be read (a damaged compare.json).
        self.broken: dict[str, str] = {}
        self.lock = asyncio.Lock()

    def scan(self) -> dict[str, Folder]:
        found: dict[str, Folder] = {}

        def walk(path: Path, depth: int) -> None:
            try:
                found[path.relative_to(self.root).as_posix().removeprefix(".")] = identify(path)
                return  # a compare's cells are shown on its page, not as rows of their own
            except ConsoleError:
                pass
            if depth == SCAN_DEPTH:
                return
            with contextlib.suppress(OSError), os.scandir(path) as it:
                for item in sorted(it, key=lambda i: i.name):
                    if not item.name.startswith(".") and item.is_dir(follow_symlinks=False):
                        walk(Path(item.path), depth + 1)

        walk(self.root, 0)
        return found

    def check(self) -> None:
        """Refuse a root that holds nothing to show (exit 2, saying what it lacks)."""
        if not self.root.is_dir():
            raise ConsoleError(f"{self.root}: no such directory; give the folder that holds your runs")
        if not self.scan():
            raise ConsoleError(
                f"{self.root}: holds no run, campaign or compare: no folder under it (to depth "
                f"{SCAN_DEPTH}) has a config.yaml or a compare.json; give the folder that holds them "
                "(`testbed run` writes under run.output_dir, runs/ by default)"
            )

    async def sync(self) -> list[Entry]:
        """Entries for every folder found now (new ones opened, vanished ones dropped)."""
        async with self.lock:
            found = await asyncio.to_thread(self.scan)
            for rel in self.entries.keys() - found.keys():
                if not self.entries[rel].pages:
                    del self.entries[rel]
            self.broken = {}
            for rel, folder in found.items():
                if rel not in self.entries:
                    await self._open(rel, folder)
            return [self.entries[rel] for rel in found if rel in self.entries]

    async def _open(self, rel: str, folder: Folder) -> None:
        # In a thread: the first read of a long run's events takes seconds; the pages go on meanwhile.
        try:
            self.entries[rel] = Entry(rel, folder, await asyncio.to_thread(open_view, folder.path))
        except ConsoleError as exc:
            self.broken[rel] = str(exc)

    async def get(self, rel: str) -> Entry | None:
        """The entry of a folder by its path under the root: a folder the scan found, or the run
        of a compare's cell (``<compare>/cells/<cell>/<run>``); nothing else under the root."""
        if rel not in self.entries:
            await self.sync()
        if rel not in self.entries and self._is_cell_run(rel):
            async with self.lock:
                if rel not in self.entries:
                    await self._open(rel, identify(self.root / rel))
        return self.entries.get(rel)

    def _is_cell_run(self, rel: str) -> bool:
        parts = rel.split("/")
        if len(parts) < 3 or parts[-3] != "cells" or any(p in ("", ".", "..") for p in parts):
            return False
        owner = self.entries.get("/".join(parts[:-3]))
        path = self.root / rel
        try:
            return (
                owner is not None
                and owner.folder.kind == "compare"
                and not path.is_symlink()
                and identify(path).kind == "run"
            )
        except ConsoleError:
            return False


# --- the guard: host, token, headers ---------------------------------------------------------------
class Guard:
    """ASGI middleware: on a loopback bind only loopback Host names; on any other bind the token
    (``?token=`` sets a cookie and redirects to the clean URL); security headers on every reply."""

    def __init__(self, app: Any, token: str | None, port: int) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.cookie = f"testbed_console_{port}"

    def _token_ok(self, given: str | None) -> bool:
        return (
            given is not None and self.token is not None and hmac.compare_digest(given.encode(), self.token)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        reply: Response | None = None
        if self.token is None:
            host = _host_name(request.headers.get("host") or "")
            if not is_loopback(host):
                reply = PlainTextResponse("403: this console answers only to localhost names", 403)
        elif self._token_ok(request.query_params.get("token")):
            clean = request.url.remove_query_params("token")
            reply = Response(
                status_code=303,
                headers={"location": str(clean.path) + (f"?{clean.query}" if clean.query else "")},
            )
            reply.set_cookie(self.cookie, self.token.decode(), httponly=True, samesite="strict")
        elif not self._token_ok(request.cookies.get(self.cookie)):
            reply = PlainTextResponse(
                "403: this console needs its token: open the URL that `testbed serve` printed (…/?token=…)",
                403,
            )

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        if reply is not None:
            await reply(scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)


# --- the application -------------------------------------------------------------------------------
def make_app(root: Path, token: str | None = None, port: int = 0) -> Any:
    """The console's ASGI app over ``root`` (wrapped in the ``Guard``)."""
    catalog = Catalog(Path(root))

    async def page(request: Request) -> Response:
        return FileResponse(WEB / "page.html", media_type="text/html")

    async def index_page(request: Request) -> Response:
        return FileResponse(WEB / "index.html", media_type="text/html")

    async def index(request: Request) -> Response:
        rows = []
        for entry in await catalog.sync():
            try:
                # Through the entry's own update, so that its open pages get what this reads.
                await entry.refresh()
                async with entry.lock:
                    rows.append(jsonable({"rel": entry.rel, **entry.view.summary_row()}))
            except Exception as exc:
                log.exception("%s: cannot read", entry.folder.path)
                rows.append(
                    {"rel": entry.rel, "kind": entry.folder.kind, "status": "unreadable", "error": str(exc)}
                )
        for rel, error in catalog.broken.items():
            rows.append({"rel": rel, "kind": None, "status": "unreadable", "error": error})
        return JSONResponse({"root": str(catalog.root), "rows": rows, "time": time.time()})

    async def entry_or_404(rel: str) -> Entry:
        entry = await catalog.get(rel)
        if entry is None:
            raise _NotFound(f"no run, campaign or compare at {rel!r} under {catalog.root}")
        return entry

    async def snapshot(request: Request) -> Response:
        entry = await entry_or_404(request.path_params["rel"])
        await entry.refresh()
        return JSONResponse(entry.state)

    async def stream(request: Request) -> Response:
        entry = await entry_or_404(request.path_params["rel"])
        return StreamingResponse(
            entry.follow(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    async def report_file(request: Request) -> Response:
        rel, _, name = request.path_params["rel"].rpartition("/")
        entry = await entry_or_404(rel)
        path = entry.folder.path / name
        if (
            entry.folder.kind != "compare"
            or not REPORT_FILE.match(name)
            or path.is_symlink()
            or not path.is_file()
        ):
            raise _NotFound(f"no report file {name!r} in {rel!r}")
        if name.endswith(".md"):
            # Shown as text by the page; never rendered as HTML.
            return PlainTextResponse(path.read_text(encoding="utf-8", errors="replace"))
        return FileResponse(path, media_type="image/png")

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    async def not_found(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(f"404: {exc}", 404)

    app = Starlette(
        routes=[
            Route("/", index_page),
            Route("/favicon.ico", no_icon),
            Route("/api/index", index),
            Route("/api/view/{rel:path}", snapshot),
            Route("/api/stream/{rel:path}", stream),
            Route("/files/{rel:path}", report_file),
            Route("/view/{rel:path}", page),
            Mount("/static", StaticFiles(directory=WEB)),
        ],
        exception_handlers={_NotFound: not_found},
    )
    app.state.catalog = catalog
    return Guard(app, token, port)


class _NotFound(Exception):
    pass
