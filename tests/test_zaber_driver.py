"""ZaberStage over the emulator: issue 11's Zaber points, each end to end through a real pyserial URL."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from stage_kit import COMMAND_TIMEOUT_S, LIMITS, WAIT_S, homed_zaber_stage, make_rig, zaber_rig  # noqa: F401 - the two fixtures

from drivers.errors import StageAlarm, StageError, StageNotHomed
from drivers.positioner import StageState, wait_all
from drivers.zaber import MoveInterrupted, ZaberChain, ZaberStage, lrc
from sim.serial_url import EmulatorTcpServer, register, unregister
from sim.zaber_device import ZaberDevice
from testbed.config import validate
from testbed.stages import open_stages


def _lands(stage: ZaberStage, xy: tuple[float, float]) -> None:
    stage.move_to(xy).wait(WAIT_S)
    assert stage.position() == pytest.approx(xy, abs=2e-6)


def test_outside_stop_mid_move_fails_and_reports_where(rig, stage):
    status = stage.move_to((0.2, 0.1), speed_m_s=0.01)  # ~22 s of model time: ~0.45 s at 50x
    deadline = time.monotonic() + 2.0
    while not all(ax.move is not None for ax in rig.device.axes) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    rig.device.write(b"/1 0 stop\n")  # someone else on the cable (its reply is no one's)
    with pytest.raises(MoveInterrupted, match=r"NI.*from the target \(0.200000, 0.100000\) m") as info:
        status.wait(WAIT_S)
    assert not status.success and info.value.code == "NI"
    x, y = stage.position()
    assert x < 0.19 and y < 0.095  # it really stopped short
    assert stage.state == StageState.IDLE and stage.homed  # at rest, position known
    _lands(stage, (0.05, 0.05))  # the next move clears NI and works


@pytest.mark.parametrize("flag", ["FZ", "FQ", "FE", "FD"])
def test_fault_mid_move_fails_it(rig, stage, flag):
    rig.device.inject_fault(flag, at=0.4)
    status = stage.move_to((0.2, 0.1))
    with pytest.raises(StageAlarm) as info:
        status.wait(WAIT_S)
    assert info.value.code == flag and not status.success
    assert stage.state == StageState.ALARM and stage.alarm_flag == flag and not stage.homed
    with pytest.raises(StageNotHomed, match=f"fault {flag}"):
        stage.move_to((0.1, 0.1))
    stage.home().wait(WAIT_S)  # clears the warnings, homes again
    _lands(stage, (0.02, 0.03))


def test_fault_while_idle_blocks_the_next_move(rig, stage):
    rig.device.inject_fault("FD")
    stage.position()  # any reply carries the flag
    assert stage.state == StageState.ALARM and stage.alarm_flag == "FD"
    with pytest.raises(StageNotHomed, match="FD"):
        stage.move_to((0.1, 0.1))


def test_checksums_on_the_wire(rig, stage):
    controller = rig.device.controllers[1]
    assert controller.checksum  # the driver set comm.checksum 1
    sent = [line for line in rig.device.lines_received if line.startswith("/")]
    assert sent and all(line.rsplit(":", 1)[1] == lrc(line[1:].rsplit(":", 1)[0]) for line in sent)
    rig.device.corrupt_replies = 1
    with pytest.raises(StageError, match="fails its checksum"):
        stage.position()
    assert stage.position() == pytest.approx((0.0, 0.0))  # the link is in step again


def test_alerts_are_read(rig, stage):
    stage.command(0, "set comm.alert 1")
    _lands(stage, (0.01, 0.01))
    assert stage.last_alert is not None and stage.last_alert.status == "IDLE"
    assert stage.last_alert.checksummed


def _chain_rig(addresses: tuple[int, ...]) -> tuple[ZaberDevice, str, str]:
    key = f"zchain-{uuid.uuid4().hex[:8]}"
    device = ZaberDevice(time_scale=50.0, addresses=addresses, name=key)
    return device, register("zabersim", key, device), key


def test_daisy_chain_three_stages_move_concurrently():
    device, url, key = _chain_rig((1, 2, 3))
    stages: list[ZaberStage] = []
    try:
        for a in (1, 2, 3):
            stages.append(ZaberStage(url, LIMITS, name=f"z{a}", address=a, command_timeout_s=COMMAND_TIMEOUT_S,
                                     poll_s=0.005))  # fmt: skip
        assert stages[0].chain is stages[1].chain is stages[2].chain  # one port owner
        wait_all([s.home() for s in stages], WAIT_S)
        targets = {1: (0.10, 0.02), 2: (0.03, 0.12), 3: (0.07, 0.07)}
        wait_all([s.move_to(targets[s.address]) for s in stages], WAIT_S)
        for s in stages:
            assert s.state == StageState.IDLE
            assert s.position() == pytest.approx(targets[s.address], abs=2e-6)
        # Each device moved itself, and only itself.
        usteps = {a: [round(ax.pos) for ax in device.controllers[a].axes] for a in (1, 2, 3)}
        for a, (x, y) in targets.items():
            assert usteps[a] == [round(x / s.microstep_m), round(y / s.microstep_m)]
        with pytest.raises(StageError, match="address 2 .* already served"):
            ZaberStage(url, LIMITS, name="dup", address=2, command_timeout_s=COMMAND_TIMEOUT_S)
    finally:
        for s in stages:
            s.close()
        unregister("zabersim", key)
    assert stages[0].chain.link.closed  # the last stage closed the port


def test_daisy_chain_polls_from_many_threads_never_mix_replies():
    device, url, key = _chain_rig((1, 2))
    a = ZaberStage(url, LIMITS, name="a", address=1, command_timeout_s=COMMAND_TIMEOUT_S)
    b = ZaberStage(url, LIMITS, name="b", address=2, command_timeout_s=COMMAND_TIMEOUT_S)
    errors: list[BaseException] = []

    def hammer(s: ZaberStage) -> None:
        try:
            for _ in range(60):
                assert s.command(0, "get device.id").address == s.address
                assert s.position() == (0.0, 0.0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=hammer, args=(s,)) for s in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10.0)
        assert not errors, errors
    finally:
        a.close()
        b.close()
        unregister("zabersim", key)


def test_an_explicit_chain_is_shared_and_closed_by_its_last_user():
    device, url, key = _chain_rig((1, 2))
    chain = ZaberChain.shared(url)
    try:
        a = ZaberStage(chain, LIMITS, name="a", address=1, command_timeout_s=COMMAND_TIMEOUT_S)
        b = ZaberStage(url, LIMITS, name="b", address=2, command_timeout_s=COMMAND_TIMEOUT_S)
        assert a.chain is b.chain is chain and a.port_url == url
        with pytest.raises(StageError, match="address 1 .* already served"):
            ZaberStage(url + "?scale=50", LIMITS, name="c", address=1)  # the same cable, other options
        a.close()
        b.close()
        assert not chain.link.closed  # this test still holds its share
    finally:
        chain.release()
        unregister("zabersim", key)
    assert chain.link.closed


def test_port_key_names_the_cable(tmp_path):
    assert ZaberChain.port_key("socket://10.0.0.5:4001?logging=debug") == "socket://10.0.0.5:4001"
    (tmp_path / "ttyUSB7").touch()
    (tmp_path / "by-id").symlink_to(tmp_path / "ttyUSB7")
    assert ZaberChain.port_key(str(tmp_path / "by-id")) == str(tmp_path / "ttyUSB7")


def test_two_config_stages_on_one_socket_port():
    """testbed: two stages at addresses 1 and 2 on one cable (one TCP client: the chain)."""
    with EmulatorTcpServer(ZaberDevice(time_scale=400.0, addresses=(1, 2))) as server:
        # the two stages' travel overlaps on purpose: the test is about sharing one cable
        config = validate({"lab": {"array": {"allow_overlapping_travel": True}, "stages": {
            "z1": {"backend": "zaber", "port": server.url, "origin_m": [-0.25, -0.25], "zaber_address": 1},
            "z2": {"backend": "zaber", "port": server.url, "origin_m": [0.05, -0.25], "zaber_address": 2},
        }}})  # fmt: skip
        stages = open_stages(config)
        try:
            assert stages.stages["z1"].chain is stages.stages["z2"].chain
            reached = stages.goto({"z1": (-0.2, -0.2), "z2": (0.1, -0.1)})
            assert reached["z1"] == pytest.approx((-0.2, -0.2), abs=1e-6)
            assert reached["z2"] == pytest.approx((0.1, -0.1), abs=1e-6)
        finally:
            stages.close()


def test_outside_stop_during_homing_says_so(rig):
    s = rig.open()
    try:
        s.home().wait(WAIT_S)
        _lands(s, (0.3, 0.3))  # far from home: homing takes a while
        status = s.home()
        deadline = time.monotonic() + 2.0
        while not rig.device.axes[0].homing and time.monotonic() < deadline:
            time.sleep(0.005)
        rig.device.write(b"/1 0 stop\n")
        with pytest.raises(StageNotHomed, match=r"interrupted \(NI"):
            status.wait(WAIT_S)
        assert not s.homed and s.state == StageState.ALARM
    finally:
        s.close()
