"""Opening stages as a person meets it (issue 18 points 22, 23): nothing homes unasked or
silently, limits and the gate come before homing, DTR is held low so GRBL keeps its state, a
switchless stage's position is accepted from the CLI and kept, a running run's stages are its
own, and a busy port names who holds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import serial

from drivers.grbl import GrblStage
from drivers.positioner import StageLimits, StageState
from drivers.serial_link import StageLinkError, open_port
from sim.grbl.device import GrblDevice
from sim.serial_url import install, register, unregister
from testbed.cli import main

CONFIG = """
run: {{output_dir: {out}}}
lab:
  array: {{allow_overlapping_travel: true}}
  stages:
    ma0: {{sim_time_scale: 400, origin_m: [-0.25, -0.25]}}
    ma1: {{sim_time_scale: 400, origin_m: [0.0, -0.25], home_on_start: true}}
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(CONFIG.format(out=tmp_path / "runs"))
    return str(path)


@pytest.fixture
def homes(monkeypatch):
    """Every home() the drivers are asked for, by stage name."""
    calls: list[str] = []
    real = GrblStage.home

    def spy(self):
        calls.append(self.name)
        return real(self)

    monkeypatch.setattr(GrblStage, "home", spy)
    return calls


def _rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (("0.4", "0.0"), "travel limit: X=0.65 m is outside [0, 0.5] m"),  # the example
        (("0.0", "-0.25"), "spacing limit: targets put ma0 at (0.0, -0.25) and ma1 at (0.0, -0.25)"),
    ],
)
def test_move_is_checked_before_any_homing(config, capsys, homes, target, words):
    """`stage move` out of travel, or onto where ma1 will stand once homed, is refused before a
    single stage homes (it used to home both for seconds, then refuse)."""
    assert main(["stage", "move", *target, "--stage", "ma0", "--config", config]) == 2
    assert words in capsys.readouterr().err
    assert homes == []


def test_move_says_what_it_homes_and_why(config, capsys, homes):
    assert main(["stage", "move", "-0.2", "0.1", "--stage", "ma0", "--config", config, "--json"]) == 0
    out, err = capsys.readouterr()
    assert "ma0: a fresh GRBL emulator" in err
    assert "ma0, ma1: position unknown" in err and "homing ma0, ma1 (one at a time) ..." in err
    assert "homed ma0, ma1 in" in err and "moving ma0 to region (-0.2000, 0.1000) m" in err
    assert sorted(homes) == ["ma0", "ma1"]
    (row,) = _rows(out)
    assert row["region_m"] == pytest.approx([-0.2, 0.1]) and row["next"] is None


def test_status_in_alarm_says_what_to_do_next(config, capsys, homes):
    assert main(["stage", "status", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"next: `testbed stage home --config {config} --stage ma0`" in out
    assert f"next: `testbed stage home --config {config} --stage ma1`" in out
    assert homes == []


# --- DTR: GRBL keeps its state between openings ---------------------------------------------------
LIMITS = StageLimits(travel_m=(0.3, 0.3), max_speed_m_s=0.05, accel_m_s2=0.5)


@pytest.fixture
def grbl_url():
    key = f"dtr-{time.monotonic_ns()}"
    device = GrblDevice(time_scale=400.0, travel_mm=(400.0, 400.0), name=key)
    url = register("grblsim", key, device)
    yield url, device
    unregister("grblsim", key)


def test_open_holds_dtr_low_so_grbl_keeps_its_home(grbl_url):
    url, _ = grbl_url
    with GrblStage(url, LIMITS, name="a") as first:
        assert first.reset_at_open  # a fresh controller prints its banner unasked
        first.home().wait(10.0)
        first.move_to((0.1, 0.05)).wait(10.0)
    with GrblStage(url, LIMITS, name="a") as again:
        assert not again.reset_at_open and again.homed and again.state == StageState.IDLE
        assert again.position() == pytest.approx((0.1, 0.05), abs=1e-4)


def test_emulator_resets_on_dtr_rising_edge(grbl_url):
    url, device = grbl_url
    install()
    port = open_port(url)
    assert port.dtr is False
    port.read(4096)
    device.take_output()
    port.dtr = True  # an Arduino's auto-reset: DTR goes active
    assert any(b"Grbl 1.1" in chunk for _, chunk in device.take_output())
    port.close()
    plain = serial.serial_for_url(url, timeout=0.05)  # pyserial's default: DTR high on open
    assert any(b"Grbl 1.1" in chunk for _, chunk in device.take_output())
    plain.close()


# --- a stage without homing switches, placed on the operator's word -------------------------------
SWITCHLESS = """
run: {{output_dir: {out}}}
lab:
  array: {{allow_overlapping_travel: true}}
  stages:
    ma0: {{backend: grbl, port: "grblsim://{key}?homing=0&scale=400&travel_mm=600", origin_m: [-0.25, -0.25]}}
"""


def test_accept_position_from_the_cli_is_kept_until_something_moves_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TESTBED_STATE_DIR", str(tmp_path / "state"))
    key = f"nosw-{time.monotonic_ns()}"
    path = tmp_path / "lab.yaml"
    path.write_text(SWITCHLESS.format(out=tmp_path / "runs", key=key))
    cfg = ["--config", str(path)]
    try:
        assert main(["stage", "status", *cfg, "--json"]) == 0
        (row,) = _rows(capsys.readouterr().out)
        assert row["region_m"] is None and "testbed stage accept-position" in row["next"]
        assert main(["stage", "move", "0.0", "0.0", "--stage", "ma0", *cfg]) == 2
        assert "no homing switches" in capsys.readouterr().err
        note = "carriage at the origin mark"
        assert main(["stage", "accept-position", "--stage", "ma0", "--note", note, *cfg, "--json"]) == 0
        out, err = capsys.readouterr()
        (row,) = _rows(out)
        assert note in row["basis"] and row["stage_m"] == [0.0, 0.0]
        assert "kept for later commands" in err and "$1=255" in err
        # a later command opens the port again: the word is kept (no restart, same count)
        assert main(["stage", "move", "0.0", "0.1", "--stage", "ma0", *cfg, "--json"]) == 0
        out, err = capsys.readouterr()
        assert "position kept from the operator's word" in err and "homing ma0" not in err
        assert _rows(out)[0]["region_m"] == pytest.approx([0.0, 0.1])
        # the count moved with the stage and was recorded at close: still kept
        assert main(["stage", "status", *cfg, "--json"]) == 0
        assert _rows(capsys.readouterr().out)[0]["region_m"] == pytest.approx([0.0, 0.1])
        # the controller restarts (power cut): the count starts over, so the word is not kept
        from sim.serial_url import device_for

        device_for("grblsim", key).power_cycle()
        assert main(["stage", "status", *cfg, "--json"]) == 0
        out, err = capsys.readouterr()
        assert "is not kept" in err and _rows(out)[0]["region_m"] is None
    finally:
        unregister("grblsim", key)


def test_accept_position_needs_stage_and_note(config, capsys):
    assert main(["stage", "accept-position", "--config", config, "--stage", "ma0"]) == 2
    assert "needs --note TEXT" in capsys.readouterr().err
    assert main(["stage", "accept-position", "--config", config, "--note", "x"]) == 2
    assert "needs --stage NAME" in capsys.readouterr().err
    # a GRBL stage with switches establishes its position by homing
    assert main(["stage", "accept-position", "--config", config, "--stage", "ma0", "--note", "x"]) == 2
    assert "home() establishes the position" in capsys.readouterr().err


# --- a running run holds the stages -------------------------------------------------------------
def test_status_while_a_run_holds_the_stages_shows_the_run(config, tmp_path, capsys, homes):
    from testbed.console.control import RunningMarker
    from testbed.records import RunRecorder

    yaml_text = (tmp_path / "lab.yaml").read_text()
    recorder = RunRecorder.create(tmp_path / "runs", "held", yaml_text, fsync=False)
    recorder.start(kind="run")
    recorder.live(
        "stage", stage="ma0", state="moving", position_m=[0.01, 0.02], target_m=[0.1, 0.1], alarm=None
    )
    recorder.live("stage", stage="ma1", state="alarm", position_m=None, target_m=None, alarm=1)
    with RunningMarker(recorder.run_dir, "run"):
        assert main(["stage", "status", "--config", config]) == 0
        out = capsys.readouterr().out
        assert f"held by the running run {recorder.run_dir}" in out and f"pid {os.getpid()}" in out
        assert f"testbed watch {recorder.run_dir}" in out
        assert "ma0      moving       region=(0.0100, 0.0200) m" in out
        assert "ma1      alarm        position unknown  alarm 1" in out
        assert main(["stage", "home", "--config", config]) == 2
        assert f"testbed stop {recorder.run_dir}" in capsys.readouterr().err
    assert homes == []
    # once it ends, the stages are ours again
    assert main(["stage", "status", "--config", config]) == 0
    assert "held by" not in capsys.readouterr().out


# --- point 23: a busy port ----------------------------------------------------------------------
def test_busy_port_names_the_process_holding_it(tmp_path):
    """A device node another process holds open is refused, naming that process, instead of a
    'no banner' timeout (here a pty, as a USB serial adapter's node would be)."""
    from drivers.serial_link import port_holders  # new in issue 18 point 23

    master, slave = os.openpty()
    device = os.ttyname(slave)
    os.close(slave)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys, time; f = open({device!r}, 'rb', buffering=0); print('open', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"open"
        assert [pid for pid, _ in port_holders(device)] == [holder.pid]
        with pytest.raises(StageLinkError, match=rf"{device}' is busy: held by pid {holder.pid} \(.*python"):
            GrblStage(device, LIMITS, name="ma0", boot_timeout_s=0.3, command_timeout_s=0.3)
    finally:
        holder.kill()
        holder.wait()
        os.close(master)


def test_second_opener_in_one_process_is_told_the_port_is_locked():
    master, slave = os.openpty()
    device = os.ttyname(slave)
    os.close(slave)
    try:
        first = open_port(device)
        try:
            with pytest.raises(StageLinkError, match="is busy: another process holds an exclusive lock"):
                open_port(device)
        finally:
            first.close()
    finally:
        os.close(master)


def test_busy_emulator_port_over_tcp_says_so():
    """The TCP emulator serves one client at a time, as a serial-over-TCP bridge: a second stage
    opening it (a `testbed stage` command beside a running run) is told the port is busy,
    instead of waiting out a 'no banner' timeout."""
    from sim.serial_url import serve

    with serve("grbl", scale=50.0) as server, GrblStage(server.url, LIMITS, name="first") as first:
        assert first.banner is not None
        with pytest.raises(StageLinkError, match="port busy: another client is connected"):
            GrblStage(server.url, LIMITS, name="second", boot_timeout_s=1.0, command_timeout_s=1.0)
        assert first.query_status().state == "Alarm"  # the first client is still served
