"""Shared set-up for the stage tests: emulators behind real pyserial URLs, fast clocks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from drivers.grbl import GrblStage
from drivers.positioner import StageLimits
from drivers.zaber import ZaberStage
from sim.grbl_device import GrblDevice
from sim.serial_url import register, unregister
from sim.zaber_device import ZaberDevice

SCALE = 200.0  # emulator clock: 200x real time
LIMITS = StageLimits(travel_m=(0.5, 0.5), max_speed_m_s=0.05, accel_m_s2=0.5)
COMMAND_TIMEOUT_S = 0.5
WAIT_S = 10.0  # the longest any test waits for a status


@dataclass
class Rig:
    kind: str
    device: Any  # GrblDevice | ZaberDevice
    url: str
    scheme: str
    key: str

    def open(self, **kw: Any) -> GrblStage | ZaberStage:
        opts: dict[str, Any] = dict(command_timeout_s=COMMAND_TIMEOUT_S, homing_timeout_s=2.0, name=self.key)
        opts.update(kw)
        if self.kind == "grbl":
            return GrblStage(self.url, LIMITS, **opts)
        opts.setdefault("poll_s", 0.01)
        return ZaberStage(self.url, LIMITS, **opts)

    def close(self) -> None:
        unregister(self.scheme, self.key)


def make_rig(kind: str, scale: float = SCALE, **device_kw: Any) -> Rig:
    key = f"{kind}-{uuid.uuid4().hex[:8]}"
    if kind == "grbl":
        device = GrblDevice(time_scale=scale, travel_mm=(500.0, 500.0), max_rate_mm_min=3000.0,
                            accel_mm_s2=500.0, name=key, **device_kw)  # fmt: skip
        scheme = "grblsim"
    else:
        device = ZaberDevice(time_scale=scale, travel_mm=(500.0, 500.0), max_speed_mm_s=50.0,
                             accel_mm_s2=500.0, name=key, **device_kw)  # fmt: skip
        scheme = "zabersim"
    url = register(scheme, key, device)
    return Rig(kind, device, url, scheme, key)


# The Zaber tests' own rig: one emulated Zaber stage, at a slower clock than the default (so the
# driver's polls see each move); imported by a test module, these replace conftest's ``rig`` there.
@pytest.fixture(name="rig")
def zaber_rig() -> Iterator[Rig]:
    r = make_rig("zaber", scale=50.0)
    yield r
    r.close()


@pytest.fixture(name="stage")
def homed_zaber_stage(rig: Rig) -> Iterator[GrblStage | ZaberStage]:
    s = rig.open()
    s.home().wait(WAIT_S)
    yield s
    s.close()
