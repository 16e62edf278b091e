"""The ``campaign`` section: how a channel measurement campaign rasters and sounds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from testbed.config.base import PositiveFloat, Section


class CampaignSection(Section):
    step_wavelengths: PositiveFloat = Field(0.25, description="raster step")
    order: Literal["snake", "raster"] = Field(
        "snake",
        description="snake: every other row reversed, so the antennas never fly back; raster: every row the same way",
    )
    pilots: Literal["sequential", "simultaneous"] = "sequential"
    pilot_length: int = Field(127, ge=8, description="Zadoff-Chu pilot length, in samples")
    captures_per_point: int = Field(1, ge=1, description="captures of each client at each point")
    save_iq: bool = True
    table_format: Literal["parquet", "csv"] = "parquet"
    sounder: Literal["radio", "symbol"] = Field(
        "radio",
        description="radio: pilots through the radios (IQ saved as SigMF); "
        "symbol: the symbol-level sim air, no waveform (all-sim labs only)",
    )
