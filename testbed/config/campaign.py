"""The ``campaign`` section: how a channel measurement campaign rasters and sounds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from testbed.config.base import PositiveFloat, Section


class CampaignSection(Section):
    step_wavelengths: PositiveFloat = Field(0.25, description="raster step")
    order: Literal["snake", "raster"] = "snake"
    pilots: Literal["sequential", "simultaneous"] = "sequential"
    pilot_length: int = Field(127, ge=8)
    captures_per_point: int = Field(1, ge=1)
    save_iq: bool = True
    table_format: Literal["parquet", "csv"] = "parquet"
    sounder: Literal["radio", "symbol"] = Field(
        "radio",
        description="radio: pilots through the radios (IQ saved as SigMF); "
        "symbol: the symbol-level sim air, no waveform (all-sim labs only)",
    )
