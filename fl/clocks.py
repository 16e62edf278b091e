"""Apply a node's planned clock where the platform lets us, and say so when it does not.

Order of attempts: NVML locked GPU clocks (a CUDA node; needs the right privileges), then the
Linux cpufreq ``scaling_max_freq`` of every CPU (needs write access to sysfs). Anything else,
or ``allowed=False`` (several nodes sharing one host in a dry run), records the clock as
"modeled": the latency and energy models use it, the hardware runs as it is.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class ClockRecord:
    requested_hz: float
    applied_hz: float | None
    method: str  # "nvml" | "cpufreq" | "modeled"
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _try_nvml(clock_hz: float) -> ClockRecord | None:
    try:
        import pynvml
        import torch

        if not torch.cuda.is_available():
            return None
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        supported = sorted(
            pynvml.nvmlDeviceGetSupportedGraphicsClocks(
                handle, pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            )
        )
        want_mhz = clock_hz / 1e6
        # The highest supported clock not above the plan (or the lowest there is).
        mhz = max([c for c in supported if c <= want_mhz] or supported[:1])
        pynvml.nvmlDeviceSetGpuLockedClocks(handle, mhz, mhz)
        return ClockRecord(clock_hz, mhz * 1e6, "nvml", "GPU graphics clock locked")
    except Exception as exc:  # noqa: BLE001 - no NVML, no permission: fall through to the next way
        log.debug("NVML clock lock not possible: %s", exc)
        return None


def _try_cpufreq(clock_hz: float, root: str = "/sys/devices/system/cpu") -> ClockRecord | None:
    files = sorted(glob.glob(f"{root}/cpu[0-9]*/cpufreq/scaling_max_freq"))
    if not files:
        return None
    try:
        khz = int(clock_hz / 1e3)
        lo = int(Path(files[0]).with_name("cpuinfo_min_freq").read_text())
        hi = int(Path(files[0]).with_name("cpuinfo_max_freq").read_text())
        khz = min(max(khz, lo), hi)
        for f in files:
            Path(f).write_text(str(khz))
        return ClockRecord(clock_hz, khz * 1e3, "cpufreq", f"scaling_max_freq on {len(files)} CPUs")
    except OSError as exc:
        log.debug("cpufreq not writable: %s", exc)
        return None


def apply_clock(clock_hz: float, allowed: bool = True) -> ClockRecord:
    """Set the planned clock if possible; otherwise return a record labelled "modeled"."""
    if not allowed:
        return ClockRecord(clock_hz, None, "modeled", "clock control off (shared host)")
    for attempt in (_try_nvml, _try_cpufreq):
        record = attempt(clock_hz)
        if record is not None:
            return record
    return ClockRecord(clock_hz, None, "modeled", "no NVML clock lock or writable cpufreq here")


def reset_clocks() -> None:
    """Undo an NVML lock (cpufreq limits are left to the host's policy)."""
    try:
        import pynvml
        import torch

        if torch.cuda.is_available():
            pynvml.nvmlInit()
            pynvml.nvmlDeviceResetGpuLockedClocks(
                pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            )
    except Exception:  # noqa: BLE001 - nothing was locked, or no NVML
        pass


def modeled_energy_j(
    local_steps: int, batch: int, clock_hz: float, cycles_per_sample: float, switched_capacitance: float
) -> float:
    """E = kappa tau c b f^2 (docs/explanation/system-model.md section 4)."""
    return switched_capacitance * local_steps * cycles_per_sample * batch * clock_hz**2
