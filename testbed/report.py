"""Plots and a one-page ``report.md`` from a run directory's records.

Reads ``events.jsonl`` (``round`` events of experiments, ``plan`` events, ``point`` events of
campaigns) and ``summary.json``; writes PNGs and ``report/report.md``. A plot whose data the run
does not have is left out, and the report says so, rather than drawn empty.

A ``round`` event's data (any key may be missing; ``*_db`` in dB, ``*_s`` seconds, ``*_j`` joules):

    round, scheme              the round number (from 1) and whose plan drove it
    selected, dropped          the clients planned to send, and those that did not deliver
    train_loss, val_loss, val_ppl   mean local train loss; validation loss and perplexity after it
    nmse_db                    the aggregate's NMSE against the error-free sum (-inf: digital)
    nmse_live_symbols_db       the same, measured on the symbols of this round's air
    nmse_fpa_db                the NMSE the fixed half-wavelength array gets for the same updates
    nmse_theory_db, nmse_fpa_theory_db   the analytic NMSE of each (system model, section 3)
    effective_snr_db           the aggregate's effective SNR
    positions_m, planned_positions_m     the antennas' positions read back, and as planned (N x 2)
    latency_model_s, energy_model_j      the round's modelled latency and energy (the budgets'; the
                               energy priced on what the round ran: batches, clocks, b_k sent)
    energy_planned_j           the energy the round's plan predicted (testbed/budgets.py)
    latency_wall_s, energy_measured_j    measured wall time and energy (NVML; null without a GPU)
    move_model_s, move_wall_s, plan_wall_s   modelled and measured movement, planner wall time
    air_model_s, compute_model_s         the modelled latency's airtime and compute (planned clocks)
    mse_predicted, eta, clocks_hz        the plan's predicted MSE, its OTA scale, the clients' clocks
    cycles_per_sample, cost_model        how the round's compute was priced (fl/cost.py)
    bound_constants            each constant of the bound with its source
    jain_fairness, num_clients Jain's index of participation so far; U
    update_sq_norms, aggregate_sq_norm   each client's and the aggregate's update energy
    time_breakdown_s           where the round's wall time went: slice -> s (they add up)
    node_timing_s              each node's own slices (load, train, update)
    memory_plans               per node: 4-bit and gradient checkpointing as chosen, and why
Plots are drawn on the Agg canvas (no pyplot) and cached by a hash of their data in
``report/.plots.json``: rewriting a report redraws only the plots whose data changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from testbed.records import read_events

log = logging.getLogger(__name__)

DPI = 100
# Bump when a plot's drawing changes, so cached PNGs of older reports are redrawn.
PLOT_VERSION = 4


def jain_index(counts: np.ndarray) -> float:
    """Jain's fairness index of participation counts: 1 is perfectly even, 1/U is one client only."""
    counts = np.asarray(counts, dtype=float)
    if counts.size == 0 or not np.any(counts):
        return 0.0
    return float(counts.sum() ** 2 / (counts.size * np.sum(counts**2)))


def _series(rounds: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
    if not pairs:
        return np.array([]), np.array([])
    x, y = zip(*pairs, strict=True)
    return np.asarray(x), np.asarray(y, dtype=float)


def _figure(ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.0)):  # noqa: ANN202 - matplotlib objects
    """A figure on the Agg canvas directly: no pyplot state, no GUI backend to pick."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _new_figure(title: str):  # noqa: ANN202 - matplotlib objects
    fig, ax = _figure()
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, path: Path, bottom: float = 0.12) -> Path:  # noqa: ANN001
    # Fixed margins instead of tight_layout: tight_layout draws the figure once more to measure it.
    fig.subplots_adjust(left=0.1, right=0.9, top=0.9, bottom=bottom, wspace=0.3)
    fig.savefig(path)
    return path


def _plot_learning(rounds: list[dict[str, Any]], initial_val_loss: float | None, out: Path) -> Path | None:
    x_loss, loss = _series(rounds, "train_loss")
    x_ppl, ppl = _series(rounds, "val_ppl")
    if not loss.size and not ppl.size:
        return None
    fig, ax = _new_figure("Learning: train loss and validation perplexity")
    if loss.size:
        ax.plot(x_loss, loss, "o-", label="train loss", color="tab:blue")
    ax.set_xlabel("round (0: before training)")
    ax.set_ylabel("train loss")
    if ppl.size:
        if initial_val_loss is not None and np.isfinite(initial_val_loss):
            # The evaluation before round 1 starts the curve, so round 1's gain shows.
            x_ppl, ppl = np.r_[0, x_ppl], np.r_[np.exp(initial_val_loss), ppl]
        ax2 = ax.twinx()
        ax2.plot(x_ppl, ppl, "s--", label="validation perplexity", color="tab:red")
        ax2.set_ylabel("validation perplexity")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    return _save(fig, out / "learning.png")


def _plot_nmse(rounds: list[dict[str, Any]], out: Path) -> Path | None:
    curves = [
        ("nmse_db", "movable antennas (optimized)", "o-"),
        ("nmse_fpa_db", "fixed half-wavelength array", "s--"),
        ("nmse_theory_db", "theory (guide: system model, section 3)", ":"),
    ]
    series = [(label, style, *_series(rounds, key)) for key, label, style in curves]
    if not any(y.size for _, _, _, y in series):
        return None
    fig, ax = _new_figure("Aggregation NMSE per round")
    for label, style, x, y in series:
        if y.size:
            ax.plot(x, y, style, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("NMSE (dB)")
    ax.legend()
    return _save(fig, out / "nmse.png")


def _plot_cost(rounds: list[dict[str, Any]], out: Path) -> Path | None:
    fig = cost_figure(rounds)
    if fig is None:
        return None
    fig.savefig(out / "cost.png")
    return out / "cost.png"


def cost_figure(rounds: list[dict[str, Any]]):  # noqa: ANN201 - a matplotlib Figure or None
    keys = ["latency_model_s", "latency_wall_s", "energy_model_j", "energy_measured_j"]
    if not any(_series(rounds, k)[1].size for k in keys):
        return None
    fig, (ax1, ax2) = _figure(2, (9.6, 3.8))
    # Modelled latency (what the budget counts: modelled compute, air time, movement) and the
    # wall time of a simulated run differ by orders of magnitude: each gets its own axis.
    x, y = _series(rounds, "latency_model_s")
    handles = []
    if y.size:
        handles += ax1.plot(x, np.cumsum(y), "o-", color="tab:blue", label="modelled (left axis)")
    ax1.set(title="Cumulative latency", xlabel="round", ylabel="modelled (s)")
    x, y = _series(rounds, "latency_wall_s")
    if y.size:
        wall_ax = ax1.twinx()
        handles += wall_ax.plot(x, np.cumsum(y), "s--", color="tab:red", label="measured wall (right axis)")
        wall_ax.set_ylabel("measured wall (s)")
        wall_ax.set_ylim(bottom=0)
    ax1.set_ylim(bottom=0)
    for key, label in [("energy_model_j", "modeled"), ("energy_measured_j", "measured (NVML)")]:
        x, y = _series(rounds, key)
        if y.size:
            ax2.plot(x, np.cumsum(y), "o-", label=label)
    ax2.set(title="Cumulative energy", xlabel="round", ylabel="J")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    if handles:
        ax1.legend(handles=handles, loc="upper left", fontsize="small")
    if ax2.lines:
        ax2.legend(fontsize="small")
    fig.subplots_adjust(left=0.08, right=0.92, top=0.9, bottom=0.13, wspace=0.45)
    return fig


def _plot_breakdown(rounds: list[dict[str, Any]], out: Path) -> Path | None:
    """A stacked bar per round: where each round's wall time went (``time_breakdown_s``)."""
    rows = [
        (r["round"], r["time_breakdown_s"]) for r in rounds if isinstance(r.get("time_breakdown_s"), dict)
    ]
    if not rows:
        return None
    names: list[str] = []
    for _, table in rows:
        names += [k for k in table if k not in names]
    from matplotlib.collections import PolyCollection

    fig, ax = _new_figure("Where each round's time went")
    x = np.array([r for r, _ in rows], dtype=float)
    bottom = np.zeros(len(rows))
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    colors = iter(palette(i % 20) for i in range(len(names)))  # 12 slices: no colour repeats
    for name in names:
        heights = np.array([float(table.get(name) or 0.0) for _, table in rows])
        if not heights.any():
            continue
        # One collection of rectangles per slice: far quicker to draw than a patch per bar.
        left, right, top = x - 0.4, x + 0.4, bottom + heights
        verts = np.stack(
            [np.c_[left, bottom], np.c_[right, bottom], np.c_[right, top], np.c_[left, top]], axis=1
        )
        ax.add_collection(PolyCollection(verts, facecolors=next(colors), label=name.removesuffix("_s")))
        bottom = top
    ax.set_xlim(x.min() - 0.6, x.max() + 0.6)
    ax.set_ylim(0, max(float(bottom.max()), 1e-9) * 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("wall time (s)")
    ax.legend(fontsize="x-small", ncol=2)
    return _save(fig, out / "time_breakdown.png")


def off_plan_rounds(rounds: list[dict[str, Any]], tol_m: float = 1e-3) -> list[tuple[int, float]]:
    """The rounds whose antennas did not reach the plan (the move gate refused the move, or a
    stage stopped short): (round, the largest distance of an antenna from its planned spot, m)."""
    off = []
    for r in rounds:
        planned, reached = r.get("planned_positions_m"), r.get("positions_m")
        if planned is None or reached is None:
            continue
        p, q = np.asarray(planned, dtype=float), np.asarray(reached, dtype=float)
        gap = float(np.max(np.linalg.norm(p - q, axis=-1))) if p.shape == q.shape else float("inf")
        if not gap <= tol_m:
            off.append((int(r.get("round", 0)), gap))
    return off


def participation_counts(rounds: list[dict[str, Any]], num_clients: int) -> np.ndarray:
    counts = np.zeros(num_clients, dtype=int)
    for r in rounds:
        dropped = set(r.get("dropped") or [])
        for k in r.get("selected") or []:
            if k not in dropped and 0 <= k < num_clients:
                counts[k] += 1
    return counts


def _plot_participation(counts: np.ndarray, out: Path) -> Path | None:
    if counts.size == 0 or not counts.any():
        return None
    fig, ax = _new_figure(f"Participation per client (Jain's index {jain_index(counts):.3f})")
    ax.bar(np.arange(counts.size), counts, color="tab:green")
    ax.set_xlabel("client")
    ax.set_ylabel("rounds delivered")
    ax.set_xticks(np.arange(counts.size))
    return _save(fig, out / "participation.png")


def _plot_positions(
    rounds: list[dict[str, Any]], region_m: float | None, channel_map: dict[str, Any] | None, out: Path
) -> Path | None:
    fig = positions_figure(rounds, region_m, channel_map)
    if fig is None:
        return None
    fig.savefig(out / "positions.png")
    return out / "positions.png"


def positions_figure(
    rounds: list[dict[str, Any]], region_m: float | None, channel_map: dict[str, Any] | None
):  # noqa: ANN201 - a matplotlib Figure or None
    tracks = [np.asarray(r["positions_m"], dtype=float) for r in rounds if r.get("positions_m") is not None]
    if not tracks and channel_map is None:
        return None
    fig, ax = _figure(1, (7.6, 4.8))
    ax.set_title("Receive-antenna positions over the region")
    ax.grid(True, alpha=0.3)
    if channel_map is not None:
        mesh = ax.pcolormesh(
            channel_map["x_m"], channel_map["y_m"], channel_map["gain_db"], shading="auto", cmap="viridis"
        )
        fig.colorbar(mesh, ax=ax, label=channel_map.get("label", "gain summed over the clients (dB)"))
    if tracks:
        stacked = np.stack(tracks)  # (rounds, N, 2)
        for n in range(stacked.shape[1]):
            (track,) = ax.plot(stacked[:, n, 0], stacked[:, n, 1], "-", alpha=0.6, label=f"antenna {n}")
            color = track.get_color()
            ax.plot(stacked[0, n, 0], stacked[0, n, 1], "s", mfc="none", color=color, ms=8)
            ax.plot(stacked[-1, n, 0], stacked[-1, n, 1], "o", color=color, ms=7)
        # Shape keys for the marks, once, in grey; the legend goes beside the region, not on it.
        ax.plot([], [], "s", mfc="none", color="0.3", label="round 1")
        ax.plot([], [], "o", color="0.3", label=f"round {len(tracks)} (last)")
        ax.legend(
            fontsize="small", loc="upper left", bbox_to_anchor=(1.02 if channel_map is None else 1.3, 1)
        )
    if region_m:
        half = region_m / 2
        ax.plot([-half, half, half, -half, -half], [-half, -half, half, half, -half], "k--", lw=1)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_aspect("equal")
    fig.subplots_adjust(left=0.1, right=0.62 if channel_map is not None else 0.72, top=0.9, bottom=0.12)
    return fig


def _plot_baselines(plan: dict[str, Any] | None, out: Path) -> Path | None:
    fig = baselines_figure(plan)
    return None if fig is None else _save(fig, out / "baselines.png", bottom=0.3)


def baselines_figure(plan: dict[str, Any] | None):  # noqa: ANN201 - a matplotlib Figure or None
    """The planner's prediction for its plan and each baseline: the aggregation MSE in dB above
    the best finite one (a bar from 0, so the longer bar is the worse plan), and the energy on a
    log scale (the baselines' energies span decades)."""
    if not plan or not plan.get("baselines"):
        return None
    names = ["optimized", *plan["baselines"]]
    rows = [plan.get("optimized", {}), *plan["baselines"].values()]
    fig, axes = _figure(2, (10.5, 4.4))
    idx = np.arange(len(names))
    mse = [r.get("mse_db") for r in rows]
    finite_mse = [v for v in mse if v is not None and np.isfinite(v)]
    best = min(finite_mse) if finite_mse else 0.0
    energy = [r.get("energy_j") for r in rows]
    panels = [
        (axes[0], [None if v is None or not np.isfinite(v) else v - best for v in mse],
         f"Predicted aggregation MSE\n(dB above the best, {best:.1f} dB; shorter is better)", "dB", "tab:purple"),
        (axes[1], [None if v is None or not np.isfinite(v) or v <= 0 else v for v in energy],
         "Predicted total energy\n(log scale; shorter is better)", "J", "tab:orange"),
    ]  # fmt: skip
    for ax, values, title, unit, color in panels:
        heights = [0.0 if v is None else v for v in values]
        ax.bar(idx, heights, color=color)
        if ax is axes[0]:
            # A plan level with the best has no bar to see: its number says so.
            for i, v in enumerate(values):
                if v is not None:
                    label = "best" if v < 0.05 else f"+{v:.1f}"
                    ax.annotate(label, (i, v), xytext=(0, 2), textcoords="offset points", ha="center",
                                va="bottom", fontsize="x-small")  # fmt: skip
        for i, (row, raw) in enumerate(zip(rows, mse if ax is axes[0] else energy, strict=True)):
            note = None
            if row.get("feasible") is False:
                note = "infeasible"
            elif raw is not None and np.isinf(raw):
                note = "error-free"
            if note:
                ax.annotate(note, (i, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                            va="bottom", rotation=90, fontsize="x-small")  # fmt: skip
        if ax is axes[1] and any(v for v in values):
            ax.set_yscale("log")
            positive = [v for v in values if v]
            ax.set_ylim(min(positive) / 3, max(positive) * 3)
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel(unit)
        ax.set_xticks(idx, names, rotation=35, ha="right", fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
    return fig


def write_report(run_dir: str | Path, channel_map: dict[str, Any] | None = None) -> Path:
    """Write every plot the run's data allows, plus ``report/report.md``; return the latter."""
    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    docs = read_events(run_dir / "events.jsonl")
    rounds = [d["data"] for d in docs if d.get("kind") == "round"]
    rounds.sort(key=lambda r: r.get("round", 0))
    # A resumed run may have recorded a round twice: keep the last record of each.
    rounds = list({r.get("round"): r for r in rounds}.values())
    plans = [d["data"] for d in docs if d.get("kind") == "plan"]
    start = next((d for d in docs if d.get("doc") == "start"), {})
    summary = _summary(run_dir)
    initial_val_loss = initial_eval(run_dir)
    num_clients = int(start.get("num_clients") or summary.get("num_clients") or 0)
    region_m = start.get("region_m") or summary.get("region_m")
    if channel_map is None:
        channel_map = _load_channel_map(run_dir)

    counts = participation_counts(rounds, num_clients) if num_clients else np.array([])
    cache = _PlotCache(out)

    def cols(*keys: str) -> list[list[Any]]:  # a plot's data: the rounds that have any of its keys
        rows = [[r.get(k) for k in keys] for r in rounds]
        return [
            [r.get("round"), *row]
            for r, row in zip(rounds, rows, strict=True)
            if any(v is not None for v in row)
        ]

    plan = plans[-1] if plans else None
    figures = {
        "Learning": cache.draw(
            "learning.png",
            [cols("train_loss", "val_ppl"), initial_val_loss],
            lambda: _plot_learning(rounds, initial_val_loss, out),
        ),
        "Aggregation NMSE": cache.draw(
            "nmse.png", cols("nmse_db", "nmse_fpa_db", "nmse_theory_db"), lambda: _plot_nmse(rounds, out)
        ),
        "Latency and energy": cache.draw(
            "cost.png",
            cols("latency_model_s", "latency_wall_s", "energy_model_j", "energy_measured_j"),
            lambda: _plot_cost(rounds, out),
        ),
        "Round time breakdown": cache.draw(
            "time_breakdown.png", cols("time_breakdown_s"), lambda: _plot_breakdown(rounds, out)
        ),
        "Participation": cache.draw("participation.png", counts, lambda: _plot_participation(counts, out)),
        "Antenna positions": cache.draw(
            "positions.png",
            [cols("positions_m"), region_m, channel_map],
            lambda: _plot_positions(rounds, region_m, channel_map, out),
        ),
        "Against the baselines": cache.draw("baselines.png", plan, lambda: _plot_baselines(plan, out)),
    }
    cache.save()
    scheme = start.get("scheme") or summary.get("scheme") or "ours"
    lines = [f"# Report: {run_dir.name}", "", f"Scheme: **{scheme}** (whose plan drove every round)", ""]
    stop = next((d for d in reversed(docs) if d.get("doc") == "stop"), None)
    lines.append(f"Status: **{stop['status'] if stop else 'incomplete (no stop record)'}**")
    if stop and stop.get("reason"):
        lines.append(f"({stop['reason']})")
    lines.append("")
    if summary:
        lines += ["| figure | value |", "|---|---|"]
        for key, value in summary.items():
            if isinstance(value, dict | list):
                continue
            if key == "first_val_loss" and initial_val_loss is not None:
                lines.append(f"| initial val loss (before round 1) | {_fmt(initial_val_loss)} |")
            lines.append(f"| {FIGURE_LABELS.get(key, key)} | {_fmt(value)} |")
        lines.append("")
    median = summary.get("median_time_breakdown_s")
    if isinstance(median, dict) and median:
        lines += ["Median round time breakdown (largest first):", "", *breakdown_table(median), ""]
    if counts.size and counts.any():
        lines.append(f"Participation per client: {counts.tolist()} (Jain's index {jain_index(counts):.3f})")
        lines.append("")
    if any(r.get("planned_positions_m") is not None for r in rounds):
        off = off_plan_rounds(rounds)
        if off:
            where = ", ".join(f"round {k} ({gap * 1e3:.1f} mm off)" for k, gap in off)
            lines.append(f"**Antennas off the plan** in {len(off)} of {len(rounds)} rounds: {where}; those rounds "
                         "ran where the antennas stood (run.log says why).")  # fmt: skip
        else:
            lines.append("Every round's antennas reached their planned positions.")
        lines.append("")
    for title, path in figures.items():
        lines.append(f"## {title}")
        lines.append(f"![{title}]({path.name})" if path else "_No data for this plot in this run._")
        if path and title in FIGURE_NOTES:
            lines += ["", FIGURE_NOTES[title]]
        lines.append("")
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    log.info("report written to %s", report)
    return report


class _PlotCache:
    """Redraw a plot only when its data changed: ``report/.plots.json`` keeps each PNG's data hash.

    ``testbed report`` on a finished run, or a report rewritten after a resume, then only draws
    what is new. A PNG that is missing or was drawn from other data is drawn again.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / ".plots.json"
        try:
            self.keys: dict[str, str] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.keys = {}

    def draw(self, name: str, data: Any, render: Any) -> Path | None:
        key = _fingerprint([PLOT_VERSION, name, data])
        png = self.path.parent / name
        stored = self.keys.get(name)
        if stored == key and png.exists():
            return png
        if stored == key + ":empty":
            return None  # still no data for this plot
        result = render()
        self.keys[name] = key if result is not None else key + ":empty"
        return result

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.keys, sort_keys=True), encoding="utf-8")
        tmp.replace(self.path)


def _fingerprint(data: Any) -> str:
    def default(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return [
                str(value.dtype),
                value.shape,
                hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest(),
            ]
        if isinstance(value, np.generic):
            return value.item()
        return str(value)

    text = json.dumps(data, default=default, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def _load_channel_map(run_dir: Path) -> dict[str, Any] | None:
    """A campaign's gain map, if the run saved one as ``channel_map.npz``."""
    path = run_dir / "channel_map.npz"
    if not path.exists():
        return None
    data = np.load(path)
    return {"x_m": data["x_m"], "y_m": data["y_m"], "gain_db": data["gain_db"]}


def _summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def initial_eval(run_dir: Path) -> float | None:
    """The validation loss before round 1: the coordinator's ``initial_eval`` in fl/events.jsonl."""
    path = run_dir / "fl" / "events.jsonl"
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        # Only the complete lines that name the event: a torn last line is never one of them.
        if '"initial_eval"' in line:
            try:
                return float(json.loads(line)["val_loss"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


# The summary's keys as the report names them (the rest show as they are).
FIGURE_LABELS = {
    "first_val_loss": "val loss after round 1 (first_val_loss)",
    "final_val_loss": "final val loss",
    "final_val_ppl": "final val perplexity",
    "wall_s": "wall time (s)",
    "latency_model_s": "modelled latency (s)",
    "energy_model_j": "modelled energy (J)",
}


# What a reader needs to read a plot right, under it.
FIGURE_NOTES = {
    "Learning": "Validation perplexity at round 0 is the evaluation before any training.",
    "Aggregation NMSE": "Measured each round against the error-free sum of the same updates; lower is better.",
    "Latency and energy": "Modelled latency is what the budget counts (modelled compute at the planned "
    "clocks, air time, antenna movement); the measured wall time has its own axis.",
    "Antenna positions": "Each antenna's path this run: a square where it started (round 1), a dot where it ended.",
    "Against the baselines": "The planner's prediction for the last plan of the run (MSE: the "
    "predicted error of the aggregate, sigma^2 ||m||^2 / eta; the NMSE plot above is the measured one, "
    "normalized by the aggregate's energy). Error-free digital has no MSE; an infeasible plan breaks a "
    "budget or the fairness floor and is not ranked.",
}


def breakdown_table(median_s: dict[str, float]) -> list[str]:
    """Median seconds per slice as a markdown table in milliseconds, largest first, with shares."""
    total = sum(v for v in median_s.values() if v) or 1.0
    rows = sorted(median_s.items(), key=lambda kv: -(kv[1] or 0.0))
    lines = ["| slice | median (ms) | share |", "|---|---:|---:|"]
    lines += [
        f"| {k.removesuffix('_s')} | {1e3 * (v or 0.0):.1f} | {100 * (v or 0.0) / total:.0f} % |"
        for k, v in rows
    ]
    return lines


def format_breakdown(median_s: dict[str, float]) -> str:
    """One line for a terminal: ``train 916 ms, plan 146 ms, ...`` largest first."""
    rows = sorted(median_s.items(), key=lambda kv: -(kv[1] or 0.0))
    return ", ".join(f"{k.removesuffix('_s')} {1e3 * (v or 0.0):.0f} ms" for k, v in rows)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
