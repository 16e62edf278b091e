"""Run a whole federation on one host: the Python API the experiment code calls.

    from fl.runner import run_federated
    metrics = run_federated(config, run_dir, air=None, planner=None, on_round=None)

- ``config``: a ``testbed.config.TestbedConfig``. Used: ``run.seed``/``run.name``,
  ``lab.clients.count`` (U nodes, ids 0..U-1) and ``tx_power_w``, ``lab.medium``/``lab.array``
  (the default air), ``allocation.clients_per_round``/``clock_max_hz`` (the default planner) and
  ``cycles_per_sample``/``switched_capacitance`` (modeled energy), and all of ``fl``.
- ``run_dir``: where ``events.jsonl``, ``metrics.jsonl``, ``checkpoints/round-NNNN/`` (adapter
  safetensors + state.json), ``config.yaml``, ``keys/`` (made if CURVE is on and
  ``fl.transport.keys_dir`` holds no keys) and ``logs/node-<i>.log`` go.
- ``air``: an ``fl.airlink.AirLink`` living with the coordinator (nodes send their bursts in OTA
  messages; the coordinator feeds them to ``air.send`` at the slot time, then ``air.collect``).
  ``None`` builds ``sim.symbol_air.SymbolAir`` from the config, with the coordinator's RNG (so
  its noise is part of the checkpointed RNG state). Ignored when ``fl.aggregation`` is digital.
- ``planner(round, channels, available) -> fl.coordinator.RoundPlan``: ``round`` is 1-based,
  ``channels`` is the air's estimate H (U x N complex; None without an air) at the antennas'
  current positions, ``available`` the ids of the live nodes. It returns selection, local
  steps, lr, per-node batch/clock/weight phi_k, and optionally the combiner m, powers P_k and
  b_k (recomputed through ``allocation.aircomp`` if a node drops). Moving antennas belongs in
  the planner (before it returns), since the coordinator estimates channels just before calling
  it. ``None`` uses ``round_robin_planner(config)``.
- ``on_round(record)``: called after each round with its metrics (the same dict as a line of
  ``metrics.jsonl``): selected, delivered, dropped, val_loss, val_perplexity, train_loss,
  per-node metrics (loss, tokens/s, peak memory, energy + its source, clock + its method),
  eta, predicted_mse, nmse, effective_snr_db, participation, jain_fairness, timings.
- ``resume=True`` continues ``run_dir`` after its last complete round.
Returns the list of per-round records. ``LocalFederation`` is the same with the node processes
exposed (``.processes``, ``.kill_node(k)``). Its ``node_mode``: ``fork`` (default: processes
forked from a pre-warmed zygote, ``fl.launcher``), ``process`` (one ``testbed node`` CLI
subprocess each, as on separate hosts), or ``thread`` (in this process; fast, for tests).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from drivers.errors import FLError
from fl import ota
from fl.aggregation import default_combiner
from fl.coordinator import Coordinator, Planner, RoundPlan
from fl.keys import KeyLayout, make_lab_keys
from fl.training import cosine_lr

log = logging.getLogger(__name__)


def round_robin_planner(config: Any) -> Planner:
    """Select K clients round robin over the live nodes; m = normalised channel sum; ZF b_k."""
    fl, alloc = config.fl, config.allocation
    power = float(config.lab.clients.tx_power_w)

    def plan(r: int, channels: np.ndarray | None, available: list[int]) -> RoundPlan:
        k = min(alloc.clients_per_round, len(available))
        start = ((r - 1) * alloc.clients_per_round) % len(available)
        selected = sorted(available[(start + i) % len(available)] for i in range(k))
        batch = {c: fl.training.batch_size for c in selected}
        weights = {c: float(batch[c]) for c in selected}
        combiner, b_k, extra = None, None, {}
        if channels is not None:
            h = channels[selected]
            combiner = default_combiner(h)
            pre = ota.precode(combiner, h, selected, [weights[c] for c in selected], [power] * k, 1.0)
            b_k = dict(zip(selected, pre.b_k, strict=True))
            extra["eta"] = pre.eta
        return RoundPlan(
            round=r,
            selected=selected,
            local_steps=fl.training.local_steps,
            lr=cosine_lr(r, fl.rounds, fl.training.lr, fl.training.lr_min),
            batch=batch,
            clock_hz={c: float(alloc.clock_max_hz) for c in selected},
            weights=weights,
            combiner=combiner,
            b_k=b_k,
            extra=extra,
        )

    return plan


def build_symbol_air(config: Any, rng: np.random.Generator):  # noqa: ANN201 - SymbolAir
    """The sim's symbol-level air for ``lab`` (the world ``testbed run`` sees with this seed),
    antennas on a line through the region's centre."""
    # up a floor: with no air given, a federation run alone (no testbed) needs the sim's default air
    from sim.channel import draw_lab_channel
    from sim.medium import dbm_to_w
    from sim.symbol_air import SymbolAir

    lab = config.lab
    # The channel is fixed by the seed, not checkpointed: the same draw as testbed.world.draw_channel.
    channel = draw_lab_channel(lab, np.random.default_rng([config.run.seed, 5]))
    n = lab.num_antennas
    step = lab.array.region_m / n
    positions = np.stack([(np.arange(n) - (n - 1) / 2) * step, np.zeros(n)], axis=1)
    noise_w = dbm_to_w(lab.medium.noise_power_dbm) if lab.medium.impairments.awgn else 0.0
    return SymbolAir(channel, positions, noise_w, rng)


def node_start_method(config: Any) -> str:
    """``spawn`` for a node that will use CUDA (a fork cannot inherit a usable CUDA state), else
    ``fork`` from the warm zygote."""
    model = config.fl.model
    if model.load_in_4bit:
        return "spawn"
    if model.source == "pretrained":
        import torch

        return "spawn" if torch.cuda.is_available() else "fork"
    return "fork"


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file (what a node printed before it died)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(the log is empty)"


class LocalFederation:
    """The coordinator in this process and U nodes on loopback (processes, or threads).

    Parameters
    ----------
    config
        A ``TestbedConfig``; copied, so the bind address and keys set here stay local.
    run_dir
        Where the run's records, checkpoints, ``config.yaml``, ``keys/`` and node logs go.
    air
        The ``fl.airlink.AirLink`` of the OTA slot; None builds the config's ``SymbolAir`` (OTA)
        or goes without one (digital).
    planner
        ``planner(round, channels, available) -> RoundPlan``; None: ``round_robin_planner``.
    on_round
        Called with each finished round's record.
    on_event
        Called with every event record.
    resume
        Continue ``run_dir`` after its last complete round.
    node_mode
        How the nodes run: ``fork`` (from a pre-warmed zygote), ``process`` (one ``testbed
        node`` subprocess each) or ``thread`` (in this process, for tests).
    bind
        The coordinator's ZeroMQ bind address (``*``: any free port).
    node_kwargs
        Extra ``fl.node.Node`` keyword arguments per node id (thread mode only).
    radio_clock
        The radios' device time, in which slot times are given; default the host clock.
    """

    def __init__(
        self,
        config: Any,
        run_dir: str | Path,
        air: Any = None,
        planner: Planner | None = None,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        resume: bool = False,
        node_mode: str = "fork",
        bind: str = "tcp://127.0.0.1:*",
        node_kwargs: dict[int, dict[str, Any]] | None = None,
        radio_clock: Callable[[], float] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = config.model_copy(deep=True)
        t = config.fl.transport
        t.bind = bind
        if not t.insecure and not KeyLayout(Path(t.keys_dir)).secret("coordinator").is_file():
            t.keys_dir = self.run_dir / "keys"
            make_lab_keys(t.keys_dir, config.lab.clients.count)
        self.config = config
        self.rng = np.random.default_rng([config.run.seed, 3])
        if air is None and config.fl.aggregation == "ota":
            air = build_symbol_air(config, self.rng)
        self.coordinator = Coordinator(
            config,
            self.run_dir,
            planner or round_robin_planner(config),
            air,
            self.rng,
            on_round,
            on_event,
            resume,
            radio_clock=radio_clock,
        )
        if node_mode not in ("fork", "process", "thread"):
            raise ValueError(f"node_mode={node_mode!r}; allowed fork, process, thread")
        self.node_mode = node_mode
        self.node_kwargs = node_kwargs or {}
        self.processes: dict[int, Any] = {}  # subprocess.Popen or fl.launcher.ForkedNode
        self.threads: dict[int, threading.Thread] = {}
        self.nodes: dict[int, Any] = {}
        self.coordinator.startup_check = self.check_started

    def start_nodes(self) -> None:
        if self.coordinator.loop is None:
            self.coordinator.bind()
        cfg_path = self.run_dir / "config.yaml"
        cfg_path.write_text(
            yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
        )
        (self.run_dir / "logs").mkdir(exist_ok=True)
        for k in range(self.config.lab.clients.count):
            self.start_node(k)

    def start_node(self, k: int) -> None:
        """Start node ``k`` (again, after a kill: it says HELLO and rejoins from the next round)."""
        endpoint, cfg_path = self.coordinator.endpoint, self.run_dir / "config.yaml"
        log_path = self.run_dir / "logs" / f"node-{k}.log"
        if self.node_mode == "thread":
            from fl.node import Node

            node = Node(self.config, k, endpoint, **self.node_kwargs.get(k, {}))
            self.nodes[k] = node
            self.threads[k] = threading.Thread(target=node.run, name=f"node-{k}", daemon=True)
            self.threads[k].start()
        elif self.node_mode == "fork":
            from fl.launcher import shared_zygote

            # A node of this federation exits as soon as its coordinator falls silent
            # (rejoin_timeout_s=0): a local coordinator that died never comes back.
            self.processes[k] = shared_zygote().spawn(
                cfg_path, k, endpoint, log_path, start=node_start_method(self.config), rejoin_timeout_s=0.0
            )
        else:
            env = {
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
            cmd = [sys.executable, "-m", "testbed.cli", "node", str(cfg_path), "--node-id", str(k),
                   "--connect", endpoint, "--threads", "1", "--rejoin-timeout-s", "0"]  # fmt: skip
            with log_path.open("ab") as out:
                self.processes[k] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def check_started(self) -> None:
        """Raise ``FLError`` with its last log lines if a node process exited before joining.

        The coordinator calls this while it waits for the nodes: a node that cannot even load its
        model must end the run at once, not after fl.transport.join_timeout_s.
        """
        joined = self.coordinator.nodes
        for k, proc in sorted(self.processes.items()):
            rc = proc.poll()
            if rc is None or k in joined:
                continue
            log_path = self.run_dir / "logs" / f"node-{k}.log"
            raise FLError(
                f"node {k} exited with code {rc} during start-up, before it joined; the last lines of "
                f"{log_path}:\n{log_tail(log_path)}"
            )

    def kill_node(self, k: int) -> None:
        """Fault injection: SIGKILL node ``k``'s process (no BYE, no goodbye)."""
        self.processes[k].send_signal(signal.SIGKILL)

    def run(self) -> list[dict[str, Any]]:
        """Run every round. On a crash (not an ``FLError``) no BYE is sent: node processes
        (``fork``/``process``) exit once the coordinator's heartbeats stop, since a local
        coordinator never comes back; ``thread`` nodes wait up to fl.transport.join_timeout_s
        for a resumed coordinator on the same address and rejoin, as remote nodes do."""
        if not self.processes and not self.threads:
            self.start_nodes()
        try:
            metrics = self.coordinator.run()
        except FLError:
            self.stop_nodes()
            raise
        self.stop_nodes()
        return metrics

    def stop_nodes(self, timeout_s: float = 15.0) -> None:
        for k, p in self.processes.items():
            info = self.coordinator.nodes.get(k)
            if p.poll() is None and (info is None or not info.alive):
                p.kill()  # never joined or already lost: no BYE reached it, so it would wait on
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in self.threads.values():
            t.join(timeout=timeout_s)


def run_federated(
    config: Any,
    run_dir: str | Path,
    air: Any = None,
    planner: Planner | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Coordinator in process + ``lab.clients.count`` node subprocesses on loopback; see the module doc."""
    return LocalFederation(config, run_dir, air, planner, on_round, resume=resume).run()
