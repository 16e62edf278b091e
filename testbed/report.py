"""Plots and a one-page ``report.md`` from a run directory's records.

Reads ``events.jsonl`` (``round`` events of experiments, ``plan`` events, ``point`` events of
campaigns) and ``summary.json``; writes PNGs and ``report/report.md``. A plot whose data the run
does not have is left out, and the report says so, rather than drawn empty.

Round events carry (any may be missing): round, selected, dropped, train_loss, val_loss,
val_ppl, nmse_db, nmse_fpa_db, nmse_theory_db, snr_db, positions_m, latency_model_s,
latency_wall_s, energy_model_j, energy_measured_j, num_clients, time_breakdown_s (slice -> s).
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
PLOT_VERSION = 3


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


def _plot_learning(rounds: list[dict[str, Any]], out: Path) -> Path | None:
    x_loss, loss = _series(rounds, "train_loss")
    x_ppl, ppl = _series(rounds, "val_ppl")
    if not loss.size and not ppl.size:
        return None
    fig, ax = _new_figure("Learning: train loss and validation perplexity")
    if loss.size:
        ax.plot(x_loss, loss, "o-", label="train loss", color="tab:blue")
    ax.set_xlabel("round")
    ax.set_ylabel("train loss")
    if ppl.size:
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
        ("nmse_theory_db", "theory (MODEL.md sec. 3)", ":"),
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
    keys = ["latency_model_s", "latency_wall_s", "energy_model_j", "energy_measured_j"]
    if not any(_series(rounds, k)[1].size for k in keys):
        return None
    fig, (ax1, ax2) = _figure(2, (9.6, 3.8))
    for key, label in [("latency_model_s", "modeled"), ("latency_wall_s", "measured (wall)")]:
        x, y = _series(rounds, key)
        if y.size:
            ax1.plot(x, np.cumsum(y), "o-", label=label)
    ax1.set(title="Cumulative latency", xlabel="round", ylabel="s")
    for key, label in [("energy_model_j", "modeled"), ("energy_measured_j", "measured (NVML)")]:
        x, y = _series(rounds, key)
        if y.size:
            ax2.plot(x, np.cumsum(y), "o-", label=label)
    ax2.set(title="Cumulative energy", xlabel="round", ylabel="J")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    return _save(fig, out / "cost.png")


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
    tracks = [np.asarray(r["positions_m"], dtype=float) for r in rounds if r.get("positions_m") is not None]
    if not tracks and channel_map is None:
        return None
    fig, ax = _new_figure("Receive-antenna positions over the region")
    if channel_map is not None:
        mesh = ax.pcolormesh(
            channel_map["x_m"], channel_map["y_m"], channel_map["gain_db"], shading="auto", cmap="viridis"
        )
        fig.colorbar(mesh, ax=ax, label=channel_map.get("label", "channel gain (dB)"))
    if tracks:
        stacked = np.stack(tracks)  # (rounds, N, 2)
        for n in range(stacked.shape[1]):
            (track,) = ax.plot(stacked[:, n, 0], stacked[:, n, 1], "-", alpha=0.5)
            ax.plot(stacked[-1, n, 0], stacked[-1, n, 1], "o", color=track.get_color(), label=f"antenna {n}")
        ax.legend(fontsize="small")
    if region_m:
        half = region_m / 2
        ax.plot([-half, half, half, -half, -half], [-half, -half, half, half, -half], "k--", lw=1)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_aspect("equal")
    return _save(fig, out / "positions.png")


def _plot_baselines(plan: dict[str, Any] | None, out: Path) -> Path | None:
    if not plan or not plan.get("baselines"):
        return None
    names = ["optimized", *plan["baselines"]]
    rows = [plan.get("optimized", {}), *plan["baselines"].values()]
    fig, axes = _figure(2, (10.5, 4.0))
    idx = np.arange(len(names))
    for ax, key, title, unit, color in [
        (axes[0], "mse_db", "Predicted aggregation MSE", "dB", "tab:purple"),
        (axes[1], "energy_j", "Predicted total energy", "J", "tab:orange"),
    ]:
        values = [r.get(key) for r in rows]
        finite = [v if v is not None and np.isfinite(v) else 0.0 for v in values]
        ax.bar(idx, finite, color=color)
        for i, (row, value) in enumerate(zip(rows, values, strict=True)):
            note = None
            if row.get("feasible") is False:
                note = "infeasible"
            elif value is not None and np.isinf(value):
                note = "error-free"
            if note:
                below = min(finite) < 0  # negative bars (dB): write the note downwards
                ax.annotate(
                    note,
                    (i, 0),
                    ha="center",
                    va="top" if below else "bottom",
                    rotation=90,
                    fontsize="x-small",
                )
        ax.set(title=title, ylabel=unit)
        ax.set_xticks(idx, names, rotation=35, ha="right", fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, out / "baselines.png", bottom=0.3)


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
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
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
            "learning.png", cols("train_loss", "val_ppl"), lambda: _plot_learning(rounds, out)
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
        lines += [f"| {k} | {_fmt(v)} |" for k, v in summary.items() if not isinstance(v, dict | list)]
        lines.append("")
    median = summary.get("median_time_breakdown_s")
    if isinstance(median, dict) and median:
        lines += ["Median round time breakdown:", "", "| slice | median (s) |", "|---|---|"]
        lines += [f"| {k.removesuffix('_s')} | {_fmt(v)} |" for k, v in median.items()]
        lines.append("")
    if counts.size and counts.any():
        lines.append(f"Participation per client: {counts.tolist()} (Jain's index {jain_index(counts):.3f})")
        lines.append("")
    for title, path in figures.items():
        lines.append(f"## {title}")
        lines.append(f"![{title}]({path.name})" if path else "_No data for this plot in this run._")
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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
