"""Build the lab from a config (all sim, all real, or mixed) and close it cleanly.

The ``Lab`` holds the receive-antenna stages, the channel model the optimizer plans positions
on, the live air (an AirLink) and, for comparison, the same air seen through a fixed
half-wavelength array. ``close()`` stops every stage and closes every device; it is safe to call
twice and runs on Ctrl-C and on errors (``testbed.experiment`` calls it in ``finally``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from allocation.problem import lambda_half_grid
from drivers.positioner import wait_all
from drivers.stage_array import XY, StageArray
from sim.channel import FieldResponseChannel
from sim.symbol_air import SymbolAir
from testbed.config import TestbedConfig
from testbed.planning import default_channel
from testbed.world import air_noise_power_w, draw_channel

log = logging.getLogger(__name__)


def move_with_detours(stages: StageArray, targets: list[XY], timeout_s: float) -> None:
    """Move the antennas to ``targets`` (in ``stages.names`` order) through the array's gate:
    all at once when the clearance check allows it, else one at a time with L-shaped detours
    around the others (``StageArray.route``). A target outside travel, two targets closer than
    the clearance, or a move no detour makes safe is refused before anything moves."""
    goal = dict(zip(stages.names, targets, strict=True))
    wait_all(stages.move_all(goal, route=True), timeout_s)


def take_over_settling(stages: StageArray) -> float:
    """The longest settle time of the array's drivers, which stop sleeping it themselves: the lab
    waits it once, after every stage is Idle, so a round's settle is a phase of its own."""
    settle_s = 0.0
    for stage in stages.stages.values():
        settle_s = max(settle_s, float(getattr(stage, "settle_s", 0.0) or 0.0))
        if hasattr(stage, "settle_s"):
            stage.settle_s = 0.0
    return settle_s


@dataclass
class Lab:
    config: TestbedConfig
    stages: Any  # testbed.stages.StageArray: the N antennas' stages in region coordinates
    channel: Any  # the ChannelModel the optimizer plans positions on
    air: Any  # the live AirLink (antennas where the stages are)
    fixed_air: Any  # the same sim world through the fixed lambda/2 array; None with real radios
    settle_s: float = 0.0  # after a move, once all stages are Idle (taken over from the drivers)
    _closed: bool = False

    def describe(self) -> dict[str, Any]:
        lab = self.config.lab
        return {
            "stages": {name: s.backend for name, s in lab.stages.items()},
            "receiver": lab.receiver.backend,
            "clients": lab.clients.radio.backend,
            "airlink": self.config.fl.airlink,
        }

    def antenna_positions(self) -> np.ndarray:
        """Where the antennas are now (N x 2, region metres), read back from the stages."""
        positions = self.stages.positions()
        return np.array([positions[name] for name in self.stages.names], dtype=float)

    @property
    def _timeout_s(self) -> float:
        return max(s.homing_timeout_s for s in self.config.lab.stages.values())

    def home(self) -> None:
        stages = self.config.lab.stages.values()
        if any(s.home_on_start for s in stages):
            # homing passes the gate: stages of unknown position home one at a time
            wait_all(self.stages.home_all(), sum(s.homing_timeout_s for s in stages) + 5.0)
        self.air.set_positions(self.antenna_positions())

    def move_antennas(self, positions_m: np.ndarray, settle: bool = True) -> np.ndarray:
        """Move every antenna and wait for Idle (then the settle time, unless ``settle`` is False:
        the caller times it as a phase of its own with ``settle()``); where they really are."""
        targets = [(float(x), float(y)) for x, y in np.asarray(positions_m, dtype=float)]
        move_with_detours(self.stages, targets, self._timeout_s)
        reached = self.antenna_positions()
        self.air.set_positions(reached)
        if settle:
            self.settle()
        return reached

    def settle(self) -> None:
        """Wait for the antennas to stop ringing after a move: the longest stage's settle time,
        once every stage is Idle (the lab settles them together, not each driver on its own)."""
        if self.settle_s > 0:
            time.sleep(self.settle_s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.stages.stop_all()
        except Exception as exc:  # noqa: BLE001 - closing must go on to the next device
            log.warning("stopping the stages: %s", exc)
        self.stages.close()
        close_air = getattr(self.air, "close", None)
        if close_air is not None:
            close_air()


def _open_air(config: TestbedConfig, world: FieldResponseChannel | None, start_m: np.ndarray) -> Any:
    """The live AirLink: symbol-level on the sim world, or timed bursts through the radios."""
    seed = config.run.seed
    if config.fl.airlink == "symbol":
        assert world is not None
        return SymbolAir(world, start_m, air_noise_power_w(config), np.random.default_rng([seed, 21]))
    from sim.medium import Medium
    from testbed.air.radio_airlink import open_radio_airlink

    medium = None
    if world is not None:  # every radio simulated: IQ through the shared medium
        medium = Medium.from_config(config.lab, np.random.default_rng([seed, 21]), channel=world)
        medium.set_positions("receiver", start_m)
    return open_radio_airlink(config, medium)


def build_lab(config: TestbedConfig, rng: np.random.Generator) -> Lab:
    """Open every configured device (nothing moves yet; ``Lab.home`` homes).

    The world is simulated when every radio is (``sim``), and real when every radio is a USRP;
    stages may be either in both cases. Positions are planned on ``allocation.channel_map`` (a
    campaign's measured map) when given, else on the simulated world; with real radios a map is
    required. The fixed-array comparison needs the simulated world, so real radios go without it.
    """
    from testbed.preflight import check_radios
    from testbed.stages import open_stages

    lab = config.lab
    simulated = check_radios(config)  # the same checks `testbed check` runs
    world = draw_channel(config) if simulated else None
    if config.allocation.channel_map:
        channel = default_channel(config)  # the measured map
    else:
        channel = world
    array = config.lab.array
    fixed = lambda_half_grid(lab.num_antennas, array.wavelength_m, array.region_m, array.min_spacing_m)
    stages = open_stages(config, home=False)
    settle_s = take_over_settling(stages)
    try:
        air = _open_air(config, world, fixed)
    except BaseException:
        stages.close()
        raise
    fixed_air = None
    if world is not None:
        # The live air's noise per combined symbol (on the radio path, after the matched filter),
        # so the two arrays are compared at the same SNR.
        fixed_air = SymbolAir(world, fixed, air.noise_power_w, np.random.default_rng([config.run.seed, 22]))
    return Lab(config, stages, channel, air, fixed_air, settle_s)
