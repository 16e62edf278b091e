"""The campaign's shared names: SigMF namespace and versions, the table's columns, its error,
the grid tolerance, and the radio-config helpers the plan and the sounders both use."""

from __future__ import annotations

from typing import Any

from drivers.errors import ConfigError, TestbedError
from testbed.config import TestbedConfig

SIGMF_NAMESPACE = "ma_ota"
SIGMF_NAMESPACE_VERSION = "0.1.0"
SPATIAL_VERSION = "1.1.0"
COLLECTION_NAME = "campaign"
TABLE_COLUMNS = (
    "point",
    "antenna",
    "client",
    "ix",
    "iy",
    "x_m",
    "y_m",
    "x_read_m",
    "y_read_m",
    "h_re",
    "h_im",
    "snr_db",
    "radio_time_s",
    "time",
)
_GRID_TOL = 1e-9  # metres: float slack when fitting grid points into the region and travel


class CampaignError(TestbedError):
    """A campaign cannot start, resume or finish (bad run directory, config changed, ...)."""


def _all_sim_radios(config: TestbedConfig) -> bool:
    return config.lab.receiver.backend == "sim" and config.lab.clients.radio.backend == "sim"


def _client_sections(config: TestbedConfig) -> list[Any]:
    """Each real client's radio section, pointed at its own radio server."""
    clients = config.lab.clients
    if clients.radio_servers:
        return [clients.radio.model_copy(update={"server": addr}) for addr in clients.radio_servers]
    if clients.count == 1:
        return [clients.radio]
    raise ConfigError(
        f"lab.clients.radio_servers: {clients.count} real clients need one radio server address each "
        "(got none)"
    )
