"""The campaign's report: ``report/report.md`` and its gain map, from a campaign directory.

A campaign is not an FL run: its report says what was measured (the grid, the clients, the
points, the SNR), each receive chain's estimated gain, and the gain map, and nothing about
schemes or learning. ``testbed report DIR`` picks this template for a campaign directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Who the gain map's gain belongs to, said the same way on the plot and in the text.
GAIN_MAP_LABEL = "channel gain summed over the clients, sum_k |h_k|^2 (dB)"


def _plot_gain_map(run_dir: Path, out: Path) -> Path | None:
    path = run_dir / "channel_map.npz"
    if not path.exists():
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = np.load(path)
    fig = Figure(figsize=(6.4, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    mesh = ax.pcolormesh(data["x_m"], data["y_m"], data["gain_db"], shading="auto", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label=GAIN_MAP_LABEL)
    ax.set_title("Gain map: each cell as the antenna over it read it", fontsize="medium")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_aspect("equal")
    fig.subplots_adjust(left=0.12, right=0.95, top=0.92, bottom=0.1)
    fig.savefig(out / "gain_map.png")
    return out / "gain_map.png"


def _snr_per_client(points: list[dict[str, Any]]) -> list[str]:
    snr = [np.asarray(p["snr_db"], dtype=float) for p in points if p.get("snr_db") is not None]
    if not snr:
        return []
    stacked = np.stack(snr)  # (points, clients, antennas)
    lines = ["| client | median SNR (dB) | min (dB) | max (dB) |", "|---|---:|---:|---:|"]
    for k in range(stacked.shape[1]):
        v = stacked[:, k, :]
        lines.append(f"| {k} | {np.median(v):.1f} | {v.min():.1f} | {v.max():.1f} |")
    return lines


def is_campaign(run_dir: Path) -> bool:
    """A campaign directory: its summary says so, or (cut short) its first event is a point."""
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            return json.loads(summary.read_text(encoding="utf-8")).get("kind") == "campaign"
        except ValueError:
            pass
    # up to the start document and the first event: a campaign writes points, a run plans
    with (run_dir / "events.jsonl").open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if '"kind": "point"' in line:
                return True
            if '"kind": "round"' in line or '"kind": "plan"' in line:
                return False
    return False


def write_campaign_report(run_dir: Path) -> Path:
    """Write ``report/report.md`` (and ``gain_map.png``) for a campaign; return the report."""
    from testbed.records import read_events

    run_dir = Path(run_dir)
    docs = read_events(run_dir / "events.jsonl")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    points = [d["data"] for d in docs if d.get("kind") == "point"]
    stop = next((d for d in reversed(docs) if d.get("doc") == "stop"), None)
    lines = [f"# Campaign report: {run_dir.name}", ""]
    lines.append(f"Status: **{stop['status'] if stop else 'incomplete (no stop record)'}**")
    if stop and stop.get("reason"):
        lines.append(f"({stop['reason']})")
    lines.append("")
    if summary:
        nx, ny = summary.get("grid_nx"), summary.get("grid_ny")
        rows = [
            ("points measured", f"{len(points)} of {summary.get('steps', '?')}"),
            ("grid", f"{nx} x {ny} cells over a {summary.get('region_m', float('nan')):.3f} m square"),
            ("antennas x clients", f"{summary.get('num_antennas')} x {summary.get('num_clients')}"),
            ("table", f"{summary.get('table')} ({summary.get('rows')} rows)"),
            ("SigMF recordings", str(summary.get("recordings"))),
            ("median SNR (dB)", _num(summary.get("snr_db_median"))),
            ("receive chains' gain (dB)", ", ".join(_num(v) for v in summary.get("chain_gain_db") or [])),
            ("receive chains' phase (deg)", ", ".join(_num(v) for v in summary.get("chain_phase_deg") or [])),
        ]
        if summary.get("point_wall_s") is not None:
            rows.append(("wall time per point (s)", _num(summary.get("point_wall_s"))))
        lines += ["| figure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
        lines += [
            "The receive chains' gain and phase are estimated from the cells two antennas both read, "
            "relative to antenna 0; the table keeps the raw estimates and the map corrects for them.",
            "",
        ]
    snr = _snr_per_client(points)
    if snr:
        lines += ["## SNR per client", "", "Over every point and antenna:", "", *snr, ""]
    lines += ["## Gain map", ""]
    gain_map = _plot_gain_map(run_dir, out)
    if gain_map is None:
        lines.append("_The gain map is written when the campaign completes (channel_map.npz)._")
    else:
        lines += [
            f"![Gain map]({gain_map.name})",
            "",
            f"Each cell shows the {GAIN_MAP_LABEL}, as estimated at the antenna that read that "
            "cell (the antennas share the region in a formation, each covering its own strip). "
            "`testbed plan CONFIG --set allocation.channel_map=RUN_DIR` plans on this map.",
        ]
    lines.append("")
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    log.info("report written to %s", report)
    return report


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3g}"
