"""Channel measurement campaigns: raster the receive antennas over the region, sound every client.

``testbed measure CONFIG`` lands here. The shape of one campaign:

1. **Plan** (``plan_campaign``): a square grid over the whole region, edge to edge, with step
   ``campaign.step_wavelengths`` lambda (or the next smaller one that divides the region). The
   N antennas move together in a rigid formation: the grid's columns are cut into N strips of
   equal width (neighbouring strips share a column where N does not divide the column count),
   antenna n covers strip n, and all antennas visit the same (column-in-strip, row) at once, in
   snake order (or raster order). A rigid formation keeps every pairwise distance constant, so
   one check at plan time covers the whole campaign; the plan also says how close two paths come
   under the ``StageArray``'s conservative any-point test (below the clearance, the array runs
   those moves one antenna at a time). Every check (clearance, stage travel, radio backends)
   runs before any device is opened, so a bad config stops before anything moves.
2. **Per step**: move the formation, wait for it, read the positions back, then sound every client
   (``RadioSounder``: Zadoff-Chu pilots one client after another, or all at once with distinct
   roots separated by interference cancellation; or ``SymbolSounder``, the symbol-level sim air
   without a waveform) and estimate the channel per client per antenna, with its SNR.
3. **Record**: the raw IQ of each (step, client) as a SigMF recording (cf32_le, N interleaved
   channels, the antennas' positions in the ``spatial`` extension's ``element_geometry``, our
   keys in the declared ``ma_ota`` namespace), then one ``point`` event in ``events.jsonl``
   (flushed and fsynced by ``RunRecorder``). That event *is* the index: a step counts as done
   once its event is on disk, so ``--resume`` skips exactly those steps, and a step cut short by
   a crash is measured again (its half-written files overwritten), never recorded twice.
4. **At the end**: the tidy table (Parquet or CSV; one row per step x antenna x client, raw), the
   receive chains' relative gains from the shared columns (``estimate_chain_gains``), a ``.mat``
   export, the ``.sigmf-collection``, ``channel_map.npz`` (the gain map summed over clients,
   which the report draws behind the positions) and the report. ``testbed.channel_map`` turns
   the table into a channel model for the allocation.
"""

# The package's face: the CLI and other modules import these names from here. One module per job:
# common (shared names), plan, formation, sounding, recording (SigMF), table (with the .mat and
# map exports) and run (the loop). Imports run one way: common first; table builds on plan,
# sounding on formation; run on all of them; nothing imports run but this face.
from __future__ import annotations

from testbed.campaign.common import (
    COLLECTION_NAME,
    SIGMF_NAMESPACE,
    SIGMF_NAMESPACE_VERSION,
    SPATIAL_VERSION,
    TABLE_COLUMNS,
    CampaignError,
)
from testbed.campaign.formation import (
    Formation,
    StageFormation,
    open_formation,
)
from testbed.campaign.plan import (
    CampaignPlan,
    check_config,
    check_stage_reach,
    grid_lines,
    plan_campaign,
    plan_from_config,
)
from testbed.campaign.recording import (
    recording_name,
    write_collection,
    write_sigmf,
)
from testbed.campaign.run import (
    Campaign,
    CampaignResult,
    ProgressFn,
    completed_steps,
    run_campaign,
    step_rng,
)
from testbed.campaign.sounding import (
    RadioSounder,
    Sounder,
    Sounding,
    SymbolSounder,
    open_sounder,
    sim_medium,
)
from testbed.campaign.table import (
    estimate_chain_gains,
    find_table,
    grid_channels,
    point_rows,
    read_table,
    rows_to_columns,
    write_channel_map,
    write_mat,
    write_table,
)

__all__ = [
    "COLLECTION_NAME",
    "Campaign",
    "CampaignError",
    "CampaignPlan",
    "CampaignResult",
    "Formation",
    "ProgressFn",
    "RadioSounder",
    "SIGMF_NAMESPACE",
    "SIGMF_NAMESPACE_VERSION",
    "SPATIAL_VERSION",
    "Sounder",
    "Sounding",
    "StageFormation",
    "SymbolSounder",
    "TABLE_COLUMNS",
    "check_config",
    "check_stage_reach",
    "completed_steps",
    "estimate_chain_gains",
    "find_table",
    "grid_channels",
    "grid_lines",
    "open_formation",
    "open_sounder",
    "plan_campaign",
    "plan_from_config",
    "point_rows",
    "read_table",
    "recording_name",
    "rows_to_columns",
    "run_campaign",
    "sim_medium",
    "step_rng",
    "write_channel_map",
    "write_collection",
    "write_mat",
    "write_sigmf",
    "write_table",
]
