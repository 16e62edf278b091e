"""The campaign loop: measure every step not yet in the index, resume, finish; ``run_campaign``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from testbed.campaign.common import _GRID_TOL, CampaignError
from testbed.campaign.formation import Formation, open_formation
from testbed.campaign.plan import CampaignPlan, check_config
from testbed.campaign.recording import write_collection, write_sigmf
from testbed.campaign.sounding import Sounder, open_sounder
from testbed.campaign.table import (
    estimate_chain_gains,
    grid_channels,
    point_rows,
    rows_to_columns,
    write_channel_map,
    write_mat,
    write_table,
)
from testbed.config import TestbedConfig
from testbed.console.control import RunningMarker, stop_requested
from testbed.live import LiveFeed

log = logging.getLogger(__name__)


ProgressFn = Callable[[int, int], None]


@dataclass
class CampaignResult:
    run_dir: Path
    steps_total: int
    steps_measured: int
    steps_skipped: int
    wall_s: float
    table_path: Path | None = None
    report_path: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    step_wall_s: list[float] = field(default_factory=list)  # per step measured in this process
    step_model_s: list[float] = field(default_factory=list)  # modeled move + settle + air time

    def point_timing(self) -> tuple[float, float]:
        """(mean wall s, mean modeled s) per step, over the steps with a model (not the first)."""
        pairs = [(w, m) for w, m in zip(self.step_wall_s, self.step_model_s, strict=True) if m == m]
        if not pairs:
            return float("nan"), float("nan")
        wall, model = zip(*pairs, strict=True)
        return float(np.mean(wall)), float(np.mean(model))


def completed_steps(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The index: step -> its ``point`` record, from a run's events (first record of each wins)."""
    done: dict[int, dict[str, Any]] = {}
    for doc in events:
        if doc.get("kind") == "point":
            data = doc["data"]
            done.setdefault(int(data["point"]), data)
    return done


def step_rng(seed: int, step: int) -> np.random.Generator:
    """Each step's own noise stream: a resumed campaign draws what an unbroken one would."""
    return np.random.default_rng([int(seed), 0xCA, int(step)])


class Campaign:
    """Runs (or resumes) one campaign over already-opened devices; see the module doc."""

    def __init__(
        self,
        config: TestbedConfig,
        plan: CampaignPlan,
        formation: Formation,
        sounder: Sounder,
        recorder: Any,
    ) -> None:
        self.config = config
        self.plan = plan
        self.formation = formation
        self.sounder = sounder
        self.recorder = recorder
        self.live = LiveFeed(recorder)
        self.stopped: str | None = None  # why the campaign stopped early (``testbed stop``)
        self._here: list[list[float]] = [[float("nan")] * 2] * plan.num_antennas

    def run(self, progress: ProgressFn | None = None, stop_after: int | None = None) -> CampaignResult:
        """Measure every step not yet in the index. ``stop_after`` ends early after that many new
        steps (tests use it to cut a campaign short without a crash)."""
        t0 = time.monotonic()
        rec = self.recorder
        done = completed_steps(rec.events())
        total = self.plan.num_steps
        result = CampaignResult(rec.run_dir, total, 0, len(done), 0.0)
        if done:
            log.info("resuming: %d of %d steps already measured", len(done), total)
        if progress:
            progress(len(done), total)
        here: np.ndarray | None = None
        for step in range(total):
            if step in done:
                continue
            if stop_after is not None and result.steps_measured >= stop_after:
                break
            request = stop_requested(rec.run_dir)
            if request is not None:
                rec.event("stop_request", now=bool(request.get("now")), by=str(request.get("by", "")))
                self.stopped = f"testbed stop ({request.get('by', 'unknown')}) after {len(done)} points"
                break
            target = self.plan.step_positions_m(step)
            t_step = time.monotonic()
            record = self._measure_step(step, target)
            result.step_wall_s.append(time.monotonic() - t_step)
            result.step_model_s.append(self._model_step_s(here, target))
            here = np.asarray(record["read_m"])
            rec.event("point", **record)  # flushed + fsynced: from now on the step is done
            done[step] = _jsonable(record)
            result.steps_measured += 1
            if progress:
                progress(len(done), total)
        if len(done) == total:
            self.finish(done, result)
        result.wall_s = time.monotonic() - t0
        return result

    def _model_step_s(self, here: np.ndarray | None, target: np.ndarray) -> float:
        """What one step should take: the modeled move (scaled clock included), settle, air time."""
        move_time = getattr(self.formation, "move_time_s", None)
        if here is None or move_time is None:
            return float("nan")  # the first move starts wherever homing left the stages
        distance = float(np.max(np.hypot(*(target - here).T)))
        return move_time(distance) + getattr(self.formation, "settle_s", 0.0) + self.sounder.capture_time_s()

    def _phase(self, step: int, phase: str) -> None:
        self.recorder.live("phase", point=step, phase=phase, t_start=time.time())

    def _measure_step(self, step: int, target: np.ndarray) -> dict[str, Any]:
        """Move, sound, write the step's SigMF; return its index record (not yet appended)."""
        rec = self.recorder
        names = list(self.config.lab.stages)
        if len(names) != len(target):
            names = [f"antenna{i}" for i in range(len(target))]
        self._phase(step, "move")
        self.live.stages(names, "moving", self._here, targets_m=target)
        read = np.asarray(self.formation.move(target), dtype=float).reshape(-1, 2)
        self._here = read
        self.live.stages(names, "idle", read)
        self._phase(step, "estimate")
        sounding = self.sounder.sound(read, step_rng(self.config.run.seed, step))
        files = []
        if self.config.campaign.save_iq and sounding.iq:
            for client, iq in sorted(sounding.iq.items()):
                meta_path = write_sigmf(
                    rec.captures_dir,
                    step,
                    client,
                    iq,
                    read,
                    self.sounder.sample_rate_sps,
                    self.sounder.carrier_hz,
                    {
                        "h_re": sounding.h[client].real.tolist(),
                        "h_im": sounding.h[client].imag.tolist(),
                        "snr_db": sounding.snr_db[client].tolist(),
                        "radio_time_s": float(sounding.radio_time_s),
                        **sounding.meta.get(client, {}),
                    },
                    sounding.segments,
                    hw=sounding.hw,
                    capture_times_s=sounding.capture_times_s,
                )
                files.append(meta_path.stem)
        return {
            "point": step,
            "cells": self.plan.cells[step],
            "positions_m": target,
            "read_m": read,
            "h_re": sounding.h.real,
            "h_im": sounding.h.imag,
            "snr_db": sounding.snr_db,
            "radio_time_s": float(sounding.radio_time_s),
            "recordings": files,
            "time": time.time(),
        }

    def finish(self, done: dict[int, dict[str, Any]], result: CampaignResult) -> None:
        """Table, .mat, collection, gain map and summary from the index (the report comes after
        the stop record, in ``run_campaign``)."""
        rec = self.recorder
        rows = [row for step in sorted(done) for row in point_rows(done[step])]
        columns = rows_to_columns(rows)
        result.table_path = write_table(rec.run_dir, columns, self.config.campaign.table_format)
        gains = estimate_chain_gains(columns)
        h_grid = grid_channels(
            columns, self.plan.x_m.size, self.plan.y_m.size, self.sounder.num_clients, gains
        )
        write_mat(rec.run_dir, columns, self.plan, h_grid, gains)
        write_channel_map(rec.run_dir, self.plan, h_grid, gains)
        names = [name for step in sorted(done) for name in done[step].get("recordings", [])]
        if names:
            write_collection(
                rec.captures_dir,
                names,
                self.plan.num_antennas,
                f"channel measurement campaign {rec.run_dir.name}",
            )
        snr = columns["snr_db"]
        result.summary = {
            "kind": "campaign",
            "steps": result.steps_total,
            "grid_nx": int(self.plan.x_m.size),
            "grid_ny": int(self.plan.y_m.size),
            "num_antennas": self.plan.num_antennas,
            "num_clients": self.sounder.num_clients,
            "rows": int(snr.size),
            "recordings": len(names),
            "snr_db_median": float(np.median(snr)) if snr.size else None,
            "region_m": self.config.lab.array.region_m,
            "table": result.table_path.name,
            "chain_gain_db": (20 * np.log10(np.abs(gains))).round(3).tolist(),
            "chain_phase_deg": np.degrees(np.angle(gains)).round(2).tolist(),
        }
        wall, model = result.point_timing()
        if wall == wall:  # timing of the steps this process measured (a resume measures fewer)
            result.summary.update(
                point_wall_s=wall, point_model_s=model, point_ratio=wall / model if model > 0 else None
            )
        rec.write_summary(result.summary)


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    """The record as it reads back from events.jsonl (arrays as lists), so rows agree either way."""
    import json

    from testbed.records import to_json

    return json.loads(to_json(record))


def _resolved_yaml(config: TestbedConfig) -> str:
    from testbed.config import to_yaml

    return to_yaml(config)


def run_campaign(
    config: TestbedConfig | None = None,
    resume_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    stop_after: int | None = None,
    on_start: Callable[[Path], None] | None = None,
) -> CampaignResult:
    """Plan, open the devices, measure (or resume), finish; closes every device on any exit.

    With ``resume_dir`` the run's own ``config.yaml`` is used; a ``config`` given as well must
    resolve to the same YAML, so a resumed campaign never mixes two settings.
    """
    from testbed.config import load_config
    from testbed.records import RecordError, RunRecorder

    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        stored_path = resume_dir / "config.yaml"
        if not stored_path.is_file():
            raise CampaignError(f"--resume {resume_dir}: not a run directory (no config.yaml)")
        stored = load_config(stored_path)
        if config is not None and _resolved_yaml(config) != _resolved_yaml(stored):
            raise CampaignError(
                f"--resume {resume_dir}: the given config differs from the run's config.yaml; "
                "resume without CONFIG/--set, or start a new campaign"
            )
        config = stored
    if config is None:
        raise CampaignError("run_campaign: give a config or a run directory to resume")
    plan = check_config(config)  # a bad config stops here, before any device is opened
    if plan.min_move_gap_m < config.lab.array.min_spacing_m - _GRID_TOL:
        log.warning(
            "formation moves bring antennas' paths %.4g m apart, under the %.4g m clearance: the "
            "stage array will run those moves one antenna at a time (slower, still safe); a smaller "
            "campaign.step_wavelengths avoids it",
            plan.min_move_gap_m,
            config.lab.array.min_spacing_m,
        )

    meta = {
        "kind": "campaign",
        "num_clients": config.lab.clients.count,
        "num_antennas": plan.num_antennas,
        "region_m": config.lab.array.region_m,
        "steps": plan.num_steps,
        "grid_x_m": plan.x_m,
        "grid_y_m": plan.y_m,
        "strip_starts": plan.strip_starts,
        "seed": config.run.seed,
    }
    if resume_dir is not None:
        try:
            recorder = RunRecorder.reopen(resume_dir)
        except RecordError as exc:
            raise CampaignError(str(exc)) from None
        events = recorder.events()
        start = next((d for d in events if d.get("doc") == "start"), {})
        if start.get("kind") != "campaign":
            recorder.close()
            raise CampaignError(
                f"--resume {resume_dir}: not a campaign run (its start record is "
                f"{start.get('kind', 'missing')!r}); `testbed run --resume` continues experiments"
            )
        # A new start before any new event: the earlier segment ended with a stop (or a crash).
        recorder.start(**meta, resumed=True, steps_done=len(completed_steps(events)))
    else:
        recorder = RunRecorder.create(config.run.output_dir, config.run.name, _resolved_yaml(config))
        recorder.start(**meta)
    recorder.attach_log()
    log.info("run directory: %s", recorder.run_dir)
    if on_start is not None:
        on_start(recorder.run_dir)
    status, reason = "error", ""
    formation: Formation | None = None
    sounder: Sounder | None = None
    campaign: Campaign | None = None
    try:
        formation = open_formation(config)
        sounder = open_sounder(config, formation)
        campaign = Campaign(config, plan, formation, sounder, recorder)
        with RunningMarker(recorder.run_dir, "campaign"):
            result = campaign.run(progress, stop_after)
        done = result.steps_skipped + result.steps_measured
        status = "completed" if done == result.steps_total else "partial"
        reason = f"{done} of {result.steps_total} steps measured"
        if campaign.stopped is not None:
            status, reason = "stopped", f"{campaign.stopped}; --resume continues"
        return result
    except KeyboardInterrupt:
        status, reason = "interrupted", "Ctrl-C or SIGTERM"
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _close_quietly(formation, sounder)
        if campaign is not None:
            campaign.live.close()  # the stage states still held go in before the stop
        try:
            recorder.stop(status, reason)
            if status == "completed":
                from testbed.campaign.report import write_campaign_report

                result.report_path = write_campaign_report(recorder.run_dir)
        finally:
            recorder.close()


def _close_quietly(formation: Formation | None, sounder: Sounder | None) -> None:
    """Stages stopped and closed, radios closed: each attempted even if another fails."""
    for action in (
        getattr(formation, "stop", None),
        getattr(formation, "close", None),
        getattr(sounder, "close", None),
    ):
        if action is None:
            continue
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - closing must go on; the first error is already raised
            log.warning("while closing: %s: %s", type(exc).__name__, exc)
