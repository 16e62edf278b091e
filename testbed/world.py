"""The simulated world and its noise, one home for the lab, the planner and the campaign.

``draw_channel`` is the sim's field-response world of a config (seeded from ``run.seed`` alone),
``default_channel`` what positions are planned on (a campaign's measured map when the config
names one, else that world), ``noise_power_w`` the planner's noise level and
``air_noise_power_w`` the simulated air's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.channel import FieldResponseChannel, draw_lab_channel
from testbed.config import TestbedConfig


def air_noise_power_w(config: TestbedConfig) -> float:
    """The simulated air's noise: the planner's noise level, or none with AWGN switched off."""
    return noise_power_w(config) if config.lab.medium.impairments.awgn else 0.0


def draw_channel(config: TestbedConfig) -> FieldResponseChannel:
    """The sim's clients: distances in ``lab.clients.distance_m``, field-response paths.

    Seeded from ``run.seed`` alone, so a resumed run sees the same world.
    """
    return draw_lab_channel(config.lab, np.random.default_rng([config.run.seed, 5]))


def noise_power_w(config: TestbedConfig) -> float:
    """The planner's noise level: medium.noise_power_dbm in watts (even with AWGN off in the sim)."""
    from sim.medium import dbm_to_w

    return dbm_to_w(config.lab.medium.noise_power_dbm)


def default_channel(config: TestbedConfig) -> Any:
    """What positions are planned on: the measured map of ``allocation.channel_map`` (a
    campaign's run directory or table) when given, else the sim's field-response world of this
    config (the same draw ``testbed run`` uses)."""
    if config.allocation.channel_map:
        from testbed.channel_map import load_channel_map

        return load_channel_map(config.allocation.channel_map)
    return draw_channel(config)
