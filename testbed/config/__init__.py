"""One typed configuration tree for the whole testbed (pydantic v2), loaded from YAML.

Every error names the file, the dotted field path, the bad value and what is allowed, e.g.
``configs/lab.yaml: lab.stages.ma0.travel_m: must be > 0 (got -0.2)``. Unknown keys are errors.
Overrides come as ``a.b.c=value`` strings (``--set`` on the command line); the value is parsed
as YAML, so ``--set fl.rounds=3`` gives an int and ``--set lab.stages.ma0.backend=grbl`` a string.

Units are SI and named by suffix (``_m``, ``_hz``, ``_s``, ``_w``, ``_db``, ``_dbm``).
"""

# The package's face: the rest of the testbed imports every name from here. One module per
# section (base: the strict base class and number types; lab; allocation; fl; campaign), one
# place that assembles them (tree: the run section and TestbedConfig), and loading (YAML,
# overrides, validation, error words). Imports run one way: base, the sections, tree, loading.
from __future__ import annotations

from drivers.errors import ConfigError
from testbed.config.allocation import AllocationSection, BoundSection
from testbed.config.base import (
    SPEED_OF_LIGHT_M_S,
    FiniteFloat,
    NonNegFloat,
    PositiveFloat,
    Probability,
    Section,
)
from testbed.config.campaign import CampaignSection
from testbed.config.fl import (
    DataSection,
    FLSection,
    LoraSection,
    ModelSection,
    TrainingSection,
    TransportSection,
)
from testbed.config.lab import (
    ArraySection,
    ClientsSection,
    ImpairmentsSection,
    LabSection,
    MediumSection,
    RadioSection,
    StageSection,
    check_stage_layout,
    default_stages,
)
from testbed.config.loading import (
    apply_overrides,
    load_config,
    parse_override,
    read_yaml,
    to_yaml,
    validate,
)
from testbed.config.tree import RunSection, TestbedConfig

__all__ = [
    "SPEED_OF_LIGHT_M_S",
    "AllocationSection",
    "ArraySection",
    "BoundSection",
    "CampaignSection",
    "ClientsSection",
    "ConfigError",
    "DataSection",
    "FLSection",
    "FiniteFloat",
    "ImpairmentsSection",
    "LabSection",
    "LoraSection",
    "MediumSection",
    "ModelSection",
    "NonNegFloat",
    "PositiveFloat",
    "Probability",
    "RadioSection",
    "RunSection",
    "Section",
    "StageSection",
    "TestbedConfig",
    "TrainingSection",
    "TransportSection",
    "apply_overrides",
    "check_stage_layout",
    "default_stages",
    "load_config",
    "parse_override",
    "read_yaml",
    "to_yaml",
    "validate",
]
