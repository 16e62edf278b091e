"""Live antenna stages from the config: ``open_stages(config) -> StageArray``.

    from testbed.stages import open_stages
    stages = open_stages(config)          # opens (and, per home_on_start, homes) every stage
    try:
        wait_all(stages.move_all({"ma0": (0.01, 0.02), "ma1": (0.05, 0.02)}), timeout_s=60)
        print(stages.positions())        # region coordinates, metres
    finally:
        stages.close()

Backends, per ``lab.stages.<name>.backend``:
- ``sim``: a GRBL firmware emulator per stage (``sim.grbl_device``) on a clock running
  ``sim_time_scale`` times real time, reached through the real driver over a ``grblsim://`` port,
  so a dry run exercises every byte path.
- ``grbl``: ``drivers.grbl.GrblStage`` on ``port`` (``/dev/ttyUSB0``, ``socket://host:port``).
- ``zaber``: ``drivers.zaber.ZaberStage`` on ``port`` at ``zaber_address``.

Travel, speed, acceleration and timeouts come from each stage's section; origins place each
stage's homed corner in the movable-antenna region; ``lab.array.min_spacing_m`` is the clearance
the ``StageArray`` enforces.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from drivers.errors import ConfigError, StageError, StageNotHomed
from drivers.positioner import Positioner, StageLimits, wait_all
from drivers.stage_array import StageArray
from testbed import accepted_positions
from testbed.config import LabSection, StageSection, TestbedConfig

log = logging.getLogger(__name__)


def stage_limits(section: StageSection) -> StageLimits:
    return StageLimits(
        travel_m=(section.travel_m, section.travel_m),
        max_speed_m_s=section.max_speed_m_s,
        accel_m_s2=section.accel_m_s2,
    )


def open_stage(name: str, section: StageSection) -> tuple[Positioner, list[Any]]:
    """Open one stage; return it and the clean-ups to run after it closes."""
    from drivers.grbl import GrblStage

    limits = stage_limits(section)
    cleanups: list[Any] = []
    if section.backend == "sim":
        from sim.grbl_device import GrblDevice
        from sim.serial_url import register, unregister

        device = GrblDevice(
            time_scale=section.sim_time_scale,
            travel_mm=(section.travel_m * 1e3, section.travel_m * 1e3),
            max_rate_mm_min=section.max_speed_m_s * 60_000.0,
            accel_mm_s2=section.accel_m_s2 * 1e3,
            name=name,
        )
        key = f"{name}-{uuid.uuid4().hex[:8]}"
        url = register("grblsim", key, device)
        cleanups.append(lambda: unregister("grblsim", key))
        stage: Positioner = GrblStage(
            url,
            limits,
            name=name,
            command_timeout_s=section.command_timeout_s,
            homing_timeout_s=section.homing_timeout_s,
            settle_s=section.settle_s / section.sim_time_scale,  # settling happens on the model clock
        )
        return stage, cleanups
    if not section.port:
        raise ConfigError(f"lab.stages.{name}.port: required for backend {section.backend!r} (got '')")
    if section.backend == "grbl":
        stage = GrblStage(
            section.port,
            limits,
            name=name,
            command_timeout_s=section.command_timeout_s,
            homing_timeout_s=section.homing_timeout_s,
            settle_s=section.settle_s,
        )
    else:
        from drivers.zaber import ZaberStage

        stage = ZaberStage(
            section.port,
            limits,
            name=name,
            address=section.zaber_address,
            command_timeout_s=section.command_timeout_s,
            homing_timeout_s=section.homing_timeout_s,
            settle_s=section.settle_s,
        )
    return stage, cleanups


def _quiet(text: str) -> None:
    log.info("%s", text)


def _reset_words(name: str, section: StageSection, stage: Positioner) -> str | None:
    """What to say about a controller that restarted as its port opened (None if it did not)."""
    if not getattr(stage, "reset_at_open", False):
        return None
    settings = getattr(stage, "settings", {})
    then = "until it is homed" if settings.get(22) else "until you accept it (testbed stage accept-position)"
    if section.backend == "sim":
        return f"{name}: a fresh GRBL emulator (backend sim: every run or command starts its own); its position is unknown {then}"
    return (
        f"{name}: the controller restarted when its port opened (its USB adapter pulsed DTR although the "
        f"driver held it low); its position is lost {then}. A 10 uF capacitor between RESET and GND "
        "(or the board's RESET-EN trace cut) keeps an Arduino from restarting on open"
    )


def home_stages(
    array: StageArray, names: list[str], lab: LabSection, say: Callable[[str], None] = _quiet
) -> None:
    """Home ``names`` through the array's gate (``homing_order``, checked before anything moves),
    saying what happens, and wait for them."""
    order = array.homing_order(names)
    flat = [n for batch in order for n in batch]
    how = "together" if len(order) == 1 and len(flat) > 1 else "one at a time" if len(flat) > 1 else ""
    say(f"homing {', '.join(flat)}{f' ({how})' if how else ''} ...")
    t0 = time.monotonic()
    # one after another: the bound is the sum of their homing timeouts
    wait_all(array.home_all(flat), sum(lab.stages[n].homing_timeout_s for n in flat) + 5.0)
    array.positions(flat)
    say(f"homed {', '.join(flat)} in {time.monotonic() - t0:.1f} s")


def open_stages(
    config: TestbedConfig | LabSection,
    home: bool | None = None,
    *,
    say: Callable[[str], None] = _quiet,
) -> StageArray:
    """Open every configured stage and return them as a ``StageArray`` (call ``close()``).

    ``home``: None homes the stages whose ``home_on_start`` is set; True homes all; False none.
    ``say`` hears what happens that a person should know: a controller that restarted as its
    port opened, a position kept from the operator's word (``testbed.accepted_positions``), the
    homing. If anything fails, whatever was opened is closed again before the error propagates.
    """
    lab = config.lab if isinstance(config, TestbedConfig) else config
    stages: dict[str, Positioner] = {}
    cleanups: list[Any] = []
    array: StageArray | None = None
    try:
        for name, section in lab.stages.items():
            stage, more = open_stage(name, section)
            stages[name] = stage
            cleanups += more
        # policy="route": every move of the lab (run, campaign, `testbed stage move`) may detour.
        origins = {n: s.origin_m for n, s in lab.stages.items()}
        array = StageArray(stages, origins, lab.array.min_spacing_m, policy="route")
        array.on_close.extend(cleanups)
        for name, stage in stages.items():
            words = _reset_words(name, lab.stages[name], stage)
            if words:
                say(words)
            accepted_positions.restore(name, stage, say)
            array.before_close.append(lambda n=name, st=stage: accepted_positions.refresh(n, st))
        to_home = [n for n, s in lab.stages.items() if (s.home_on_start if home is None else home)]
        if to_home:
            home_stages(array, to_home, lab, say)
        return array
    except BaseException:
        if array is not None:
            array.close()
        else:
            for stage in stages.values():
                with contextlib.suppress(StageError):
                    stage.close()
            for cleanup in cleanups:
                cleanup()
        raise


def probe_stage(name: str, section: StageSection) -> str:
    """Open one stage, read what it says about itself, close it; nothing moves.

    Raises the driver's error (port missing, no banner, wrong settings) with its own message.
    """
    stage, cleanups = open_stage(name, section)
    try:
        banner = getattr(stage, "banner", None)
        where = section.port or "emulator"
        who = f"{banner.strip()} " if banner else ""
        # a board that restarts whenever its port opens loses its position to every command
        restarted = "; it restarted when its port opened" if getattr(stage, "reset_at_open", False) else ""
        try:
            x, y = stage.position()
        except StageNotHomed:
            settings = getattr(stage, "settings", None)
            switchless = isinstance(settings, dict) and not settings.get(22)
            until = "accepted (testbed stage accept-position)" if switchless else "homed"
            return f"{who}on {where}: {stage.state.value}, position unknown until {until}{restarted}"
        return f"{who}on {where}: {stage.state.value} at ({x * 1e3:.2f}, {y * 1e3:.2f}) mm{restarted}"
    finally:
        stage.close()
        for cleanup in cleanups:
            cleanup()


__all__ = ["home_stages", "open_stage", "open_stages", "probe_stage", "stage_limits"]
