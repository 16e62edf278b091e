"""Start many node processes fast: a "zygote" process imports torch/transformers/peft once and
forks one child per node, so a local federation does not pay the ~7 s import per node.

The parent talks to the zygote in JSON lines only (no pickle): ``{"spawn": {...}}`` and
``{"close": true}`` in, ``{"ready": ...}``, ``{"spawned": node, "pid": ...}`` and
``{"exited": pid, "rc": ...}`` out. Each child is a full process with its own sockets; it can be
killed with SIGKILL like any other (``ForkedNode.send_signal``). Run as ``python -m fl.launcher``.

Lifetime: nothing here may outlive the controller. The zygote reads EOF on its stdin the moment
its parent dies (even by SIGKILL); EOF without a ``close`` first, or a new parent pid, means the
parent is gone, and the zygote SIGKILLs its children and exits. Each child also asks the kernel
for SIGKILL when the zygote dies (``PR_SET_PDEATHSIG``, Linux), so a killed zygote takes them too.

CUDA: a forked child cannot use CUDA that its parent initialised ("Cannot re-initialize CUDA in
forked subprocess"). The zygote never touches CUDA (``PYTORCH_NVML_BASED_CUDA_CHECK=1`` keeps
``torch.cuda.is_available()`` off the driver; it reports ``torch.cuda.is_initialized()`` in its
ready line), and a node that will use the GPU (``"start": "spawn"``, chosen by the caller) or any
node of a zygote whose CUDA is initialised after all is started as a fresh interpreter
(``python -m fl.launcher --child``) instead of a fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only).

    True if armed. The caller must then check ``os.getppid()``: a parent that died before the call
    armed it is not reported.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class ForkedNode:
    """A node process forked by the zygote; ``Popen``-like: pid, returncode, wait, send_signal."""

    def __init__(self, node: int, pid: int) -> None:
        self.node, self.pid = node, pid
        self.returncode: int | None = None
        self._done = threading.Event()

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"node-{self.node}", timeout or 0)
        assert self.returncode is not None
        return self.returncode


class Zygote:
    def __init__(self, env: dict[str, str] | None = None, ready_timeout_s: float = 300.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fl.launcher"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None
        self._spawned: dict[int, ForkedNode] = {}
        self._by_pid: dict[int, ForkedNode] = {}
        self._cv = threading.Condition()
        self._ready = False
        self.cuda_initialized: bool | None = None  # the zygote's torch.cuda.is_initialized(), as reported
        self._reader = threading.Thread(target=self._read, daemon=True, name="zygote-reader")
        self._reader.start()
        with self._cv:
            if not self._cv.wait_for(lambda: self._ready or self.proc.poll() is not None, ready_timeout_s):
                raise RuntimeError("the node zygote did not start in time")
        if not self._ready:
            raise RuntimeError(f"the node zygote exited with {self.proc.returncode}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._cv:
                if msg.get("ready"):
                    self._ready = True
                    self.cuda_initialized = bool(msg.get("cuda_initialized"))
                elif "spawned" in msg:
                    fn = ForkedNode(int(msg["spawned"]), int(msg["pid"]))
                    self._spawned[fn.node] = fn
                    self._by_pid[fn.pid] = fn
                elif "exited" in msg:
                    fn = self._by_pid.get(int(msg["exited"]))
                    if fn is not None:
                        fn.returncode = int(msg["rc"])
                        fn._done.set()
                self._cv.notify_all()
        with self._cv:
            for fn in self._by_pid.values():  # the zygote is gone: nothing more will be reported
                if fn.returncode is None:
                    fn.returncode = -1
                    fn._done.set()
            self._cv.notify_all()

    def spawn(
        self,
        config_path: Path,
        node: int,
        connect: str,
        log_path: Path,
        timeout_s: float = 60.0,
        start: str = "fork",
        rejoin_timeout_s: float | None = 0.0,
    ) -> ForkedNode:
        """Start node ``node``. ``start``: ``fork`` (from the warm zygote) or ``spawn`` (a fresh
        interpreter: GPU nodes). ``rejoin_timeout_s``: how long the node waits to rejoin a silent
        coordinator (0: exit at once, as a local federation's nodes do; None: join_timeout_s)."""
        if start not in ("fork", "spawn"):
            raise ValueError(f"start={start!r}; allowed fork, spawn")
        assert self.proc.stdin is not None
        spec = {
            "config": str(config_path),
            "node": node,
            "connect": connect,
            "log": str(log_path),
            "start": start,
            "rejoin_timeout_s": rejoin_timeout_s,
        }
        self.proc.stdin.write(json.dumps({"spawn": spec}) + "\n")
        self.proc.stdin.flush()
        with self._cv:
            if not self._cv.wait_for(lambda: node in self._spawned, timeout_s):
                raise RuntimeError(f"the zygote did not fork node {node}")
            return self._spawned.pop(node)

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:  # "close", then EOF: the zygote waits for its children, then exits
                self.proc.stdin.write(json.dumps({"close": True}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # the zygote is gone already
            with contextlib.suppress(BrokenPipeError, OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _redirect(log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def _child(spec: dict[str, Any]) -> int:
    import logging

    # Die with the zygote; if it is already gone, do not start at all.
    die_with_parent(signal.SIGKILL)
    if os.getppid() != int(spec["parent"]):
        return 1
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    from fl.node import Node

    # up a floor: a node process starts from a config file path, and only testbed can load one
    from testbed.config import load_config

    config = load_config(spec["config"])
    rejoin = spec.get("rejoin_timeout_s")
    return Node(
        config, int(spec["node"]), spec["connect"], rejoin_timeout_s=None if rejoin is None else float(rejoin)
    ).run()


def _run_child(spec: dict[str, Any]) -> int:
    rc = 1
    try:
        rc = _child(spec)
    except BaseException:  # noqa: BLE001 - the child's log gets the traceback
        traceback.print_exc()
    return rc


def _fork(spec: dict[str, Any]) -> int:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            _redirect(spec["log"])
            rc = _run_child(spec)
        finally:
            os._exit(rc)
    return pid


def _spawn(spec: dict[str, Any]) -> int:
    """A fresh interpreter (nothing inherited from the zygote, CUDA included); reaped by waitpid."""
    with open(spec["log"], "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fl.launcher", "--child", json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    # The zygote reaps it with waitpid(-1); stop Popen from trying (and warning) as well.
    proc.returncode = 0
    return proc.pid


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def main() -> None:
    zygote_pid, parent = os.getpid(), os.getppid()
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() without cuInit
    import torch

    torch.set_num_threads(1)
    import peft  # noqa: F401 - preloaded so every child starts warm
    import transformers  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    import fl.node  # noqa: F401
    import fl.training  # noqa: F401

    # up a floor: preloaded because _child loads the node's config with it (see there)
    import testbed.config  # noqa: F401

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"ready": True, "cuda_initialized": _cuda_initialized(), "pid": zygote_pid})
    children: set[int] = set()
    stdin_open, closing = True, False
    while stdin_open or children:
        orphaned = os.getppid() != parent
        if stdin_open and not orphaned and select.select([sys.stdin], [], [], 0.05)[0]:
            line = sys.stdin.readline()
            if not line:
                stdin_open = False
            else:
                request = json.loads(line)
                if request.get("close"):
                    closing = True
                    continue
                spec = {**request["spawn"], "parent": zygote_pid}
                # Fork only while this process has no CUDA state a child could inherit.
                if spec.get("start") == "spawn" or _cuda_initialized():
                    pid = _spawn(spec)
                else:
                    pid = _fork(spec)
                children.add(pid)
                say({"spawned": spec["node"], "pid": pid})
        elif not stdin_open or orphaned:
            if orphaned or not closing:
                # The parent died (EOF without "close", or we were re-parented): take every child down.
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                stdin_open = False
            time.sleep(0.05)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            with contextlib.suppress(BrokenPipeError, OSError):  # nobody may be listening any more
                say({"exited": pid, "rc": os.waitstatus_to_exitcode(status)})


_SHARED: Zygote | None = None


def shared_zygote() -> Zygote:
    """One zygote per process, reused by every local federation (closed at exit)."""
    global _SHARED
    if _SHARED is None or _SHARED.proc.poll() is not None:
        import atexit

        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        _SHARED = Zygote(env)
        atexit.register(_SHARED.close)
    return _SHARED


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        code = _run_child(json.loads(sys.argv[2]))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # as a forked child does: no interpreter teardown that may hang on threads
    main()
