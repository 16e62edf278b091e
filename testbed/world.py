"""The simulated world and its noise, one home for the lab, the planner and the campaign.

``draw_channel`` is the sim's field-response world of a config (seeded from ``run.seed`` alone),
``noise_power_w`` the planner's noise level and ``air_noise_power_w`` the simulated air's. What
positions are planned on (a campaign's measured map, or this world) is the planner's choice:
``testbed.planning.default_channel``. The world never reads a measured map, so the campaign,
which draws this world for its sim medium, does not lead back to the map it produces.
"""

from __future__ import annotations

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
