"""The whole configuration tree: the ``run`` section and the one place the sections are assembled
into ``TestbedConfig``, with the checks that span sections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from testbed.config.allocation import AllocationSection
from testbed.config.base import Section
from testbed.config.campaign import CampaignSection
from testbed.config.fl import FLSection
from testbed.config.lab import LabSection


class RunSection(Section):
    name: str = Field(
        "run",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=64,
        description="the run's name: its folder is <output_dir>/<name>-<UTC time>",
    )
    seed: int = Field(
        0,
        ge=0,
        description="seeds the data split, initial weights, channels and noise (each round draws from seed and round)",
    )
    output_dir: Path = Field(Path("runs"), description="where run, campaign and compare folders are made")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="the run.log file's level"
    )


class TestbedConfig(Section):
    __test__ = False  # not a pytest test class, despite the name

    run: RunSection = RunSection()
    lab: LabSection = LabSection()
    allocation: AllocationSection = AllocationSection()
    fl: FLSection = FLSection()
    campaign: CampaignSection = CampaignSection()

    @model_validator(mode="after")
    def _cross_checks(self) -> TestbedConfig:
        k, u = self.allocation.clients_per_round, self.lab.clients.count
        if k > u:
            raise ValueError(f"allocation.clients_per_round={k} exceeds lab.clients.count={u}")
        return self
