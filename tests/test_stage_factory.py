"""`open_stages(config)`: every backend from the config, as one StageArray."""

from __future__ import annotations

import pytest

from drivers.errors import ConfigError, StageError, StageNotHomed
from drivers.grbl import GrblStage
from drivers.positioner import StageState
from drivers.zaber import ZaberStage
from sim.grbl_device import GrblDevice
from sim.serial_url import EmulatorTcpServer, registered
from sim.zaber_device import ZaberDevice
from testbed.config import validate
from testbed.stages import open_stages


def test_sim_backend_homes_and_cleans_up():
    config = validate({"lab": {"array": {"allow_overlapping_travel": True}, "stages": {
        "ma0": {"sim_time_scale": 400, "origin_m": [-0.25, -0.25]},
        "ma1": {"sim_time_scale": 400, "origin_m": [0.0, -0.25], "home_on_start": False},
    }}})  # fmt: skip
    before = set(registered())
    stages = open_stages(config)
    try:
        assert len(set(registered()) - before) == 2  # one emulator per stage
        assert isinstance(stages.stages["ma0"], GrblStage)
        assert stages.stages["ma0"].state == StageState.IDLE  # homed on start
        assert stages.stages["ma1"].state == StageState.ALARM  # home_on_start: false
        assert stages.min_spacing_m == pytest.approx(config.lab.array.min_spacing_m)
        assert stages.stages["ma0"].limits.max_speed_m_s == config.lab.stages["ma0"].max_speed_m_s
        with pytest.raises(StageNotHomed, match="ma1's position is unknown"):
            stages.goto({"ma0": (-0.2, -0.1)})  # the gate cannot keep the spacing from an unknown place
        stages.stages["ma1"].home().wait(10.0)
        reached = stages.goto({"ma0": (-0.2, -0.1)})
        assert reached["ma0"] == pytest.approx((-0.2, -0.1))
    finally:
        stages.close()
    assert set(registered()) == before


def test_grbl_and_zaber_backends_over_socket_ports():
    with (
        EmulatorTcpServer(GrblDevice(time_scale=400.0)) as grbl,
        EmulatorTcpServer(ZaberDevice(time_scale=400.0)) as zaber,
    ):
        config = validate({"lab": {"array": {"allow_overlapping_travel": True}, "stages": {
            "g": {"backend": "grbl", "port": grbl.url, "origin_m": [-0.25, -0.25]},
            "z": {"backend": "zaber", "port": zaber.url, "origin_m": [0.0, -0.25], "zaber_address": 1},
        }}})  # fmt: skip
        stages = open_stages(config)
        try:
            assert isinstance(stages.stages["g"], GrblStage) and isinstance(stages.stages["z"], ZaberStage)
            reached = stages.goto({"g": (-0.1, 0.0), "z": (0.1, 0.0)})
            assert reached["g"] == pytest.approx((-0.1, 0.0)) and reached["z"] == pytest.approx(
                (0.1, 0.0), abs=1e-6
            )
        finally:
            stages.close()


def test_missing_port_and_dead_port():
    config = validate({"lab": {"stages": {"g": {"backend": "grbl"}}}})
    with pytest.raises(ConfigError, match=r"lab.stages.g.port: required for backend 'grbl'"):
        open_stages(config)
    config = validate({"lab": {"stages": {"g": {"backend": "grbl", "port": "/dev/nonexistent-tty"}}}})
    with pytest.raises(StageError, match="cannot open stage port '/dev/nonexistent-tty'"):
        open_stages(config)
