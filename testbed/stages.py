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
import uuid
from typing import Any

from drivers.errors import ConfigError, StageError, StageNotHomed
from drivers.positioner import Positioner, StageLimits, wait_all
from drivers.stage_array import StageArray
from testbed.config import LabSection, StageSection, TestbedConfig


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


def open_stages(config: TestbedConfig | LabSection, home: bool | None = None) -> StageArray:
    """Open every configured stage and return them as a ``StageArray`` (call ``close()``).

    ``home``: None homes the stages whose ``home_on_start`` is set; True homes all; False none.
    If anything fails, whatever was opened is closed again before the error propagates.
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
        to_home = [n for n, s in lab.stages.items() if (s.home_on_start if home is None else home)]
        if to_home:
            statuses = [stages[n].home() for n in to_home]
            wait_all(statuses, max(lab.stages[n].homing_timeout_s for n in to_home) + 5.0)
            # the others' positions are unknown until they are homed
            array.positions(to_home)
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
        try:
            x, y = stage.position()
        except StageNotHomed:
            return f"{who}on {where}: {stage.state.value}, position unknown until homed"
        return f"{who}on {where}: {stage.state.value} at ({x * 1e3:.2f}, {y * 1e3:.2f}) mm"
    finally:
        stage.close()
        for cleanup in cleanups:
            cleanup()


__all__ = ["open_stage", "open_stages", "probe_stage", "stage_limits"]
