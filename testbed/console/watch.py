"""``testbed watch``'s frames: a view (``testbed.console.view``) drawn with rich, and the loop that
follows a running directory until it stops.

A run's frame: round k of R with the ETA, the phase and how long it has run, the node and stage
tables, sparklines of the last rounds' validation loss and perplexity and of the NMSE through
the movable and the fixed array, energy and latency against their budgets, the antennas, and the
last warnings. A campaign's: points done of total, the ETA, the phase and the latest point's
gains. A compare's: cells done of total, the running cells with their rounds, the failed ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from testbed.console.view import AnyView, CampaignView, CompareView, RunView

# How many of the last rounds the sparklines show, and how many warnings a frame lists.
SPARK_ROUNDS = 40
WARNINGS_SHOWN = 5
# A compare lists at most this many finished cells (its report has them all).
FINISHED_SHOWN = 20
BARS = "▁▂▃▄▅▆▇█"
STATUS_STYLE = {
    "running": "bold green",
    "done": "bold blue",
    "stopped": "bold yellow",
    "interrupted": "bold yellow",
    "failed": "bold red",
    "crashed": "bold red",
}


# --- small formatters --------------------------------------------------------------------------------
def sparkline(values: Sequence[float | None], lo: float | None = None, hi: float | None = None) -> str:
    """One block character per value, scaled between ``lo`` and ``hi`` (the values' own range by
    default); a missing value is a blank."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return " " * len(values)
    lo = min(finite) if lo is None else lo
    hi = max(finite) if hi is None else hi
    span = hi - lo
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        else:
            level = 0 if span <= 0 else round((v - lo) / span * (len(BARS) - 1))
            out.append(BARS[min(len(BARS) - 1, max(0, level))])
    return "".join(out)


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def si(value: float | None, unit: str) -> str:
    """``value`` with an SI prefix (12.3 kJ, 450 mJ)."""
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return f"0 {unit}"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ")):
        if abs(value) >= factor or factor == 1e-6:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _mm(xy: Any) -> str:
    """A position in millimetres ("-" where unknown: a stage reports NaN while it homes)."""
    if not isinstance(xy, list | tuple) or len(xy) != 2 or not all(_finite(v) for v in xy):
        return "-"
    return f"({xy[0] * 1e3:.1f}, {xy[1] * 1e3:.1f}) mm"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _num(value: float | None, spec: str = ".4g") -> str:
    return format(value, spec) if _finite(value) else "-"


def _status(view: AnyView) -> Text:
    return Text(view.status, style=STATUS_STYLE.get(view.status, "bold"))


def _bar(done: int, total: int | None) -> ProgressBar:
    return ProgressBar(total=max(total or 0, 1), completed=done if total else 0, width=30)


def _warnings(rows: Sequence[dict[str, Any]]) -> RenderableType:
    table = Table.grid(padding=(0, 1))
    for w in list(rows)[-WARNINGS_SHOWN:]:
        when = time.strftime("%H:%M:%S", time.localtime(w["time"])) if w.get("time") else "--:--:--"
        where = w.get("cell") or w.get("logger") or ""
        table.add_row(Text(when, style="dim"), Text(where, style="yellow"), Text(w.get("message", "")))
    return Group(Text("last warnings", style="bold"), table) if rows else Text("no warnings", style="dim")


def _ended(view: AnyView) -> Text:
    text = Text("ended: ")
    text.append(_status(view))
    reason = getattr(view, "stop_reason", "")
    if reason:
        text.append(f" ({reason})")
    return text


def _phase_line(view: RunView | CampaignView, now: float) -> Text:
    phase = view.phase_now(now)
    if view.status != "running":
        return _ended(view)
    if phase is None:
        return Text("phase: - (between phases)", style="dim")
    text = Text("phase: ")
    text.append(phase["phase"], style="bold cyan")
    text.append(f" for {duration(phase['elapsed_s'])}")
    if view.stop_request:
        text.append("   stop requested", style="bold yellow")
    return text


# --- a run -------------------------------------------------------------------------------------------
def render_run(view: RunView, now: float) -> RenderableType:
    head = Text()
    head.append(f"run {view.name}", style="bold")
    head.append(f" ({view.scheme or '?'})  ")
    head.append(_status(view))
    total = view.rounds_total
    progress = Table.grid(padding=(0, 2))
    current = view.current_round
    if current is not None:
        where = f"round {current} of {total if total is not None else '?'}"
    else:
        where = f"{view.rounds_done} of {total if total is not None else '?'} rounds done"
    eta = view.eta_s(now)
    progress.add_row(Text(where, style="bold"), _bar(view.rounds_done, total), Text(f"ETA {duration(eta)}"))
    return Group(
        head,
        progress,
        _phase_line(view, now),
        Text(""),
        _nodes_table(view, now),
        _stages_table(view),
        _curves(view),
        _budgets(view),
        _antennas(view),
        _warnings(view.warnings),
    )


def _nodes_table(view: RunView, now: float) -> RenderableType:
    rows = view.node_table(now)
    if not rows:
        return Text("nodes: none reported yet", style="dim")
    table = Table(title="nodes", title_justify="left", expand=False, pad_edge=False)
    for column in ("node", "alive", "heartbeat", "train (last round)", "tokens/s", "GPU mem"):
        table.add_column(column, justify="right" if column != "alive" else "center")
    for row in rows:
        alive = row.get("alive")
        mark = (
            Text("-", style="dim")
            if alive is None
            else Text("yes" if alive else "NO", style="green" if alive else "bold red")
        )
        gpu = row.get("gpu_mem_bytes")
        table.add_row(
            row["node"],
            mark,
            duration(row.get("heartbeat_age_s")),
            duration(row.get("train_s")),
            _num(row.get("tokens_per_s"), ".4g"),
            "-" if gpu is None else si(gpu, "B"),
        )
    return table


def _stages_table(view: RunView) -> RenderableType:
    if not view.stages:
        return Text("stages: no state reported yet", style="dim")
    table = Table(title="stages", title_justify="left", expand=False, pad_edge=False)
    for column in ("stage", "state", "position", "target", "alarm"):
        table.add_column(column)
    for name in sorted(view.stages):
        s = view.stages[name]
        style = {"alarm": "bold red", "moving": "cyan", "homing": "cyan"}.get(s["state"], "")
        alarm = s.get("alarm")
        table.add_row(name, Text(s["state"], style=style), _mm(s.get("position_m")), _mm(s.get("target_m")), "-" if alarm is None else str(alarm))  # fmt: skip
    return table


def _curves(view: RunView) -> RenderableType:
    rows = view.rounds[-SPARK_ROUNDS:]
    if not rows:
        return Text("curves: no round finished yet", style="dim")
    first, last = rows[0]["round"], rows[-1]["round"]
    table = Table(title=f"rounds {first}-{last}", title_justify="left", box=None, pad_edge=False)
    table.add_column("")
    table.add_column("")
    table.add_column("last", justify="right")

    def add(label: str, key: str, lo: float | None = None, hi: float | None = None, unit: str = "") -> None:
        values = [r.get(key) for r in rows]
        latest = values[-1]
        table.add_row(label, sparkline(values, lo, hi), "-" if latest is None else f"{latest:.4g}{unit}")

    add("val loss", "val_loss")
    add("val perplexity", "val_ppl")
    # The two arrays on one scale, so the lines compare at a glance.
    nmse = [r.get(k) for r in rows for k in ("nmse_ma_db", "nmse_fpa_db") if r.get(k) is not None]
    lo, hi = (min(nmse), max(nmse)) if nmse else (None, None)
    add("NMSE movable", "nmse_ma_db", lo, hi, " dB")
    add("NMSE fixed", "nmse_fpa_db", lo, hi, " dB")
    return table


def _budgets(view: RunView) -> RenderableType:
    b = view.budgets()
    table = Table.grid(padding=(0, 2))
    for label, spent, budget, unit in (
        ("energy", b["energy_j"], b["energy_budget_j"], "J"),
        ("latency", b["latency_s"], b["latency_budget_s"], "s"),
    ):
        share = f"{100 * spent / budget:.1f} %" if spent is not None and budget else "-"
        bar = ProgressBar(total=budget or 1.0, completed=min(spent or 0.0, budget or 0.0), width=30)
        table.add_row(label, bar, f"{si(spent, unit)} of {si(budget, unit)} ({share})")
    return Group(Text("budgets", style="bold"), table)


def _antennas(view: RunView) -> Text:
    parts = [
        f"{view.num_antennas if view.num_antennas is not None else '?'} antennas",
        f"region {si(view.region_m, 'm')} square" if view.region_m else "region ?",
        f"clearance D {si(view.clearance_m, 'm')}" if view.clearance_m else "clearance ?",
    ]
    positions = view.positions_m()
    if positions:
        parts.append("at " + " ".join(_mm(p) for p in positions))
    return Text("antennas: " + ", ".join(parts))


# --- a campaign --------------------------------------------------------------------------------------
def render_campaign(view: CampaignView, now: float) -> RenderableType:
    head = Text()
    head.append(f"campaign {view.name}  ", style="bold")
    head.append(_status(view))
    progress = Table.grid(padding=(0, 2))
    total = view.steps_total
    progress.add_row(
        Text(f"points {view.points_done} of {total if total is not None else '?'}", style="bold"),
        _bar(view.points_done, total),
        Text(f"ETA {duration(view.eta_s(now))}"),
    )
    parts: list[RenderableType] = [head, progress, _phase_line(view, now), Text("")]
    latest = view.latest
    if latest is None:
        parts.append(Text("no point measured yet", style="dim"))
    else:
        table = Table(title=f"point {latest['point']}: gain |h| (dB)", title_justify="left", pad_edge=False)
        gains = latest["gain_db"]
        table.add_column("client")
        for n in range(len(gains[0]) if gains else 0):
            table.add_column(f"antenna {n}", justify="right")
        for k, row in enumerate(gains):
            table.add_row(str(k), *(_num(g, ".1f") for g in row))
        parts += [table, Text("at " + " ".join(_mm(p) for p in latest.get("positions_m") or []))]
    parts.append(_warnings(view.warnings))
    return Group(*parts)


# --- a compare ---------------------------------------------------------------------------------------
def render_compare(view: CompareView, now: float) -> RenderableType:
    head = Text()
    head.append(f"compare {view.name}", style="bold")
    head.append(f" ({view.scheme})  ")
    head.append(_status(view))
    total = len(view.cells)
    progress = Table.grid(padding=(0, 2))
    progress.add_row(
        Text(f"cells {view.cells_done} of {total} done", style="bold"), _bar(view.cells_done, total)
    )
    parts: list[RenderableType] = [head, progress, Text("")]
    shown = [c for c in view.cells.values() if c["state"] in ("running", "failed", "interrupted")]
    if shown:
        table = Table(title="cells", title_justify="left", pad_edge=False)
        for column in ("cell", "scheme", "state", "round", "phase", "val ppl"):
            table.add_column(column)
        for c in shown:
            total_rounds = c["rounds_total"] if c["rounds_total"] is not None else "?"
            at = c["current_round"]
            where = (
                f"round {at} of {total_rounds}"
                if at is not None
                else f"{c['rounds_done']} of {total_rounds} done"
            )
            style = {"running": "green", "failed": "bold red"}.get(c["state"], "yellow")
            table.add_row(c["cell"], c["scheme"], Text(c["state"], style=style), where, c["phase"] or "-", _num(c["final_ppl"]))  # fmt: skip
        parts.append(table)
    finished = [c for c in view.cells.values() if c["state"] == "done"]
    if finished:
        table = Table(title="finished cells", title_justify="left", pad_edge=False)
        for column in ("cell", "scheme", "rounds", "val ppl", "NMSE movable", "NMSE fixed", "wall"):
            table.add_column(column, justify="left" if column in ("cell", "scheme") else "right")
        for c in finished[-FINISHED_SHOWN:]:
            s = c["summary"] or {}
            table.add_row(
                c["cell"],
                c["scheme"],
                _num(s.get("rounds"), ".0f"),
                _num(c["final_ppl"]),
                _num(s.get("mean_nmse_ma_db"), ".1f"),
                _num(s.get("mean_nmse_fpa_db"), ".1f"),
                duration(s.get("wall_s")),
            )
        parts.append(table)
    report = view.path / "compare.md"
    if report.is_file():
        parts.append(Text(f"report: {report}"))
    pending = sum(c["state"] == "pending" for c in view.cells.values())
    parts.append(Text(f"{pending} cell{'' if pending == 1 else 's'} pending", style="dim"))
    parts.append(_warnings(view.to_dict()["warnings"]))
    return Group(*parts)


def render(view: AnyView, now: float | None = None) -> RenderableType:
    """The frame of any view, as it stands ``now``."""
    now = time.time() if now is None else now
    if isinstance(view, RunView):
        return render_run(view, now)
    if isinstance(view, CampaignView):
        return render_campaign(view, now)
    return render_compare(view, now)


def follow(view: AnyView, console: Console, interval_s: float = 0.5) -> None:
    """Redraw ``view`` in place while its directory is worked on; leave its last frame on screen."""
    with Live(render(view), console=console, auto_refresh=False, transient=False) as live:
        while view.status == "running":
            time.sleep(interval_s)
            view.refresh()
            live.update(render(view), refresh=True)
        view.refresh()
        live.update(render(view), refresh=True)
