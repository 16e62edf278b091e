"""Start many node processes fast: a "zygote" process imports torch/transformers/peft once and
forks one child per node, so a local federation does not pay the ~7 s import per node.

The parent talks to the zygote in JSON lines only (no pickle): ``{"spawn": {...}}`` in,
``{"spawned": node, "pid": ...}`` and ``{"exited": pid, "rc": ...}`` out. Each child is a full
process with its own sockets; it can be killed with SIGKILL like any other
(``ForkedNode.send_signal``). Run as ``python -m fl.launcher``.
"""

from __future__ import annotations

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
        self, config_path: Path, node: int, connect: str, log_path: Path, timeout_s: float = 60.0
    ) -> ForkedNode:
        assert self.proc.stdin is not None
        req = {"spawn": {"config": str(config_path), "node": node, "connect": connect, "log": str(log_path)}}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        with self._cv:
            if not self._cv.wait_for(lambda: node in self._spawned, timeout_s):
                raise RuntimeError(f"the zygote did not fork node {node}")
            return self._spawned.pop(node)

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # EOF: the zygote waits for its children, then exits
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _child(spec: dict[str, Any]) -> int:
    import logging

    fd = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    from fl.node import Node

    # up a floor: a node process starts from a config file path, and only testbed can load one
    from testbed.config import load_config

    config = load_config(spec["config"])
    return Node(config, int(spec["node"]), spec["connect"]).run()


def main() -> None:
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

    say({"ready": True})
    children: set[int] = set()
    stdin_open = True
    while stdin_open or children:
        if stdin_open and select.select([sys.stdin], [], [], 0.05)[0]:
            line = sys.stdin.readline()
            if not line:
                stdin_open = False
            else:
                spec = json.loads(line)["spawn"]
                sys.stdout.flush()
                pid = os.fork()
                if pid == 0:
                    rc = 1
                    try:
                        rc = _child(spec)
                    except BaseException:  # noqa: BLE001 - the child's log gets the traceback
                        traceback.print_exc()
                    finally:
                        os._exit(rc)
                children.add(pid)
                say({"spawned": spec["node"], "pid": pid})
        elif not stdin_open:
            time.sleep(0.05)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
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
    main()
