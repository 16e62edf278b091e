"""SigMF recordings of each step's raw IQ, and the collection over them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from testbed.campaign.common import COLLECTION_NAME, SIGMF_NAMESPACE, SIGMF_NAMESPACE_VERSION, SPATIAL_VERSION

_SIGMF_VALIDATED = False


def recording_name(step: int, client: int) -> str:
    return f"p{step:05d}_c{client:02d}"


def write_sigmf(
    captures_dir: Path,
    step: int,
    client: int,
    iq: np.ndarray,
    positions_m: np.ndarray,
    sample_rate_sps: float,
    carrier_hz: float,
    extra: dict[str, Any],
    segments: Sequence[tuple[int, float]] = ((0, 0.0),),
    hw: str = "",
    capture_times_s: Sequence[float] = (),
) -> Path:
    """One recording: the N antennas' IQ interleaved (cf32_le), their positions in
    ``spatial:element_geometry`` (metres, z = 0), our own keys under ``ma_ota:``. ``segments``
    are (first sample, radio time s) of each capture in it (several with captures_per_point).
    ``hw`` becomes ``core:hw`` (the receiver: "simulated", or model and serial) when given;
    ``capture_times_s`` (UTC, Unix s) each capture's ``core:datetime`` (default: now)."""
    import sigmf
    from sigmf import SigMFFile
    from sigmf.utils import SIGMF_DATETIME_ISO8601_FMT

    iq = np.asarray(iq, dtype=np.complex64)
    num_elements = iq.shape[0]
    base = captures_dir / recording_name(step, client)
    data_path = base.with_suffix(".sigmf-data")
    # (samples, channels) in C order is SigMF's interleaving of multichannel data.
    np.ascontiguousarray(iq.T).tofile(data_path)
    meta = SigMFFile(
        data_file=data_path,
        global_info={
            sigmf.DATATYPE_KEY: "cf32_le",
            sigmf.SAMPLE_RATE_KEY: float(sample_rate_sps),
            sigmf.NUM_CHANNELS_KEY: int(num_elements),
            sigmf.DESCRIPTION_KEY: f"channel sounding: step {step}, client {client}",
            sigmf.RECORDER_KEY: "ma-ota-testbed campaign",
            sigmf.EXTENSIONS_KEY: [
                {"name": "spatial", "version": SPATIAL_VERSION, "optional": True},
                {"name": SIGMF_NAMESPACE, "version": SIGMF_NAMESPACE_VERSION, "optional": True},
            ],
            "spatial:num_elements": int(num_elements),
            "spatial:channel_index": 0,
            f"{SIGMF_NAMESPACE}:point": int(step),
            f"{SIGMF_NAMESPACE}:client": int(client),
            **{f"{SIGMF_NAMESPACE}:{k}": v for k, v in extra.items()},
            **({sigmf.HW_KEY: hw} if hw else {}),
        },
    )
    geometry = [{"point": [float(x), float(y), 0.0]} for x, y in np.asarray(positions_m, dtype=float)]
    if len(capture_times_s) not in (0, len(segments)):
        raise ValueError(
            f"capture_times_s: one time per segment ({len(segments)}), got {len(capture_times_s)}"
        )
    now_s = time.time()
    for i, (start, radio_time_s) in enumerate(segments):
        when = datetime.fromtimestamp(capture_times_s[i] if capture_times_s else now_s, tz=UTC)
        meta.add_capture(
            int(start),
            metadata={
                sigmf.DATETIME_KEY: when.strftime(SIGMF_DATETIME_ISO8601_FMT),
                sigmf.FREQUENCY_KEY: float(carrier_hz),
                "spatial:element_geometry": geometry,
                f"{SIGMF_NAMESPACE}:radio_time_s": float(radio_time_s),
            },
        )
    # sigmf's validator re-checks the whole JSON schema on every call (~0.1 s); every recording
    # of a campaign has the same shape, so validate the first one this process writes.
    global _SIGMF_VALIDATED
    meta.tofile(base.with_suffix(".sigmf-meta"), overwrite=True, skip_validate=_SIGMF_VALIDATED)
    _SIGMF_VALIDATED = True
    return base.with_suffix(".sigmf-meta")


def write_collection(captures_dir: Path, names: Sequence[str], num_elements: int, description: str) -> Path:
    """The ``.sigmf-collection`` over the finished recordings (rewritten whole each time)."""
    import sigmf
    from sigmf.sigmffile import SigMFCollection

    collection = SigMFCollection(
        metafiles=[f"{name}.sigmf-meta" for name in names], base_path=captures_dir, skip_checksums=True
    )
    collection.set_collection_field(
        sigmf.EXTENSIONS_KEY,
        [
            {"name": "spatial", "version": SPATIAL_VERSION, "optional": True},
            {"name": SIGMF_NAMESPACE, "version": SIGMF_NAMESPACE_VERSION, "optional": True},
        ],
    )
    collection.set_collection_field(sigmf.DESCRIPTION_KEY, description)
    # The antennas move: each recording's captures carry their geometry, which takes priority.
    collection.set_collection_field("spatial:element_geometry", [{"unknown": True}] * num_elements)
    path = captures_dir / f"{COLLECTION_NAME}.sigmf-collection"
    tmp = captures_dir / f"{COLLECTION_NAME}.tmp"
    collection.tofile(tmp, overwrite=True)
    (captures_dir / f"{COLLECTION_NAME}.tmp.sigmf-collection").replace(path)
    return path
