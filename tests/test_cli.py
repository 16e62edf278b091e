"""The `testbed` command: help, check, and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent
DRYRUN = str(ROOT / "configs" / "dryrun.yaml")


def test_help_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "testbed.cli", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0
    for name in ["run", "measure", "plan", "coordinator", "node", "check", "stage", "keys", "report"]:
        assert name in COMMANDS
        assert f"    {name}" in out.stdout


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_check_validates_the_demo_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", DRYRUN, "--no-probe", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report == {"config": DRYRUN, "valid": True, "ok": True, "probes": []}


def test_check_rejects_a_bad_config_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", DRYRUN, "--no-probe", "--set", "lab.stages.ma0.travel_m=-1"]) == 2
    err = capsys.readouterr().err
    assert "testbed check: error:" in err and "lab.stages.ma0.travel_m: must be > 0.0 (got -1)" in err


def test_check_missing_file_exit_2_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "missing.yaml", "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["error"] == "ConfigError" and "missing.yaml: no such config file" in out["message"]


def test_check_reports_an_unreachable_serial_port(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "check",
            DRYRUN,
            "--json",
            "--set",
            "lab.stages.ma0.backend=grbl",
            "--set",
            "lab.stages.ma0.port=/dev/ttyNOPE0",
        ]
    )
    assert code == 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    bad = [p for p in report["probes"] if not p["ok"]]
    assert any(p["device"] == "stage ma0" and p["backend"] == "grbl" for p in bad)
    assert report["ok"] is False


def test_check_probes_a_grbl_board_over_tcp(capsys: pytest.CaptureFixture[str]) -> None:
    from sim.grbl_device import GrblDevice
    from sim.serial_url import EmulatorTcpServer

    # The board's $130/$131 travel and $110/$111 rate must cover the config's (the driver checks them).
    with EmulatorTcpServer(
        GrblDevice(time_scale=50.0, travel_mm=(800.0, 800.0), max_rate_mm_min=6000.0)
    ) as server:
        code = main(
            [
                "--json",
                "check",
                DRYRUN,
                "--set",
                "lab.stages.ma0.backend=grbl",
                "--set",
                f"lab.stages.ma0.port={server.url}",
            ]
        )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and report["ok"] is True
    (ma0,) = [p for p in report["probes"] if p["device"] == "stage ma0"]
    assert ma0["backend"] == "grbl" and "Grbl 1.1" in ma0["detail"] and server.url in ma0["detail"]


class _RunWouldOpenDevices(Exception):
    """Raised where `testbed run` would open its first device: every device-free check is behind it."""


SHIPPED = sorted(str(p) for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: Path(p).name)
def test_check_and_run_agree_on_every_shipped_config(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One validation serves both: where check says OK, run gets as far as opening the stages;
    where check refuses, run refuses with the same words and leaves no run directory."""
    import testbed.stages

    def would_open(*args: object, **kwargs: object) -> None:
        raise _RunWouldOpenDevices

    monkeypatch.setattr(testbed.stages, "open_stages", would_open)
    out = tmp_path / "runs"
    check_code = main(["check", config, "--no-probe", "--json"])
    check_said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    if check_code == 0:
        assert check_said["valid"] is True
        with pytest.raises(_RunWouldOpenDevices):
            main(["run", config, "--quiet", "--set", f"run.output_dir={out}"])
    else:
        assert check_code == 2
        assert main(["run", config, "--json", "--set", f"run.output_dir={out}"]) == 2
        run_said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert run_said["message"] == check_said["message"]
        assert not out.exists()  # a refused run leaves no run directory


def test_check_refuses_what_run_refuses_for_real_radios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "configs" / "lab.yaml"), "--no-probe"]) == 2
    assert "allocation.channel_map: required with real radios" in capsys.readouterr().err
    # A stage that cannot reach the whole region, and a missing data file, are refused up front.
    bad = [
        ("lab.stages.ma3.travel_m=0.5", "lab.stages.ma3: its travel x -0.46..0.04 m"),
        ("fl.data.source=alpaca", "fl.data.path: source 'alpaca' needs a local JSON/JSONL file path"),
        ("fl.model.source=pretrained", "fl.model.path: source 'pretrained' needs a local path"),
    ]
    for override, words in bad:
        assert main(["check", DRYRUN, "--no-probe", "--set", override]) == 2
        assert words in capsys.readouterr().err


def test_plan_prices_compute_as_the_run_does(capsys: pytest.CaptureFixture[str]) -> None:
    """`testbed plan` plans on this workload's cycles/sample (fl.cost), as `testbed run` does, not on
    the config's default; a value the config sets is the user's word."""
    from fl.cost import workload_cost
    from testbed.config import load_config

    quick = ["allocation.position_starts=1", "allocation.max_outer_iterations=5"]

    def plan(*overrides: str) -> dict:
        args = [a for o in (*quick, *overrides) for a in ("--set", o)]
        assert main(["plan", DRYRUN, *args, "--baselines", "fpa", "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    config = load_config(DRYRUN)
    expected = workload_cost(config).cycles_per_sample
    default = type(config.allocation).model_fields["cycles_per_sample"].default
    out = plan()
    assert out["cost_model"]["source"] == "model"
    assert out["cost_model"]["cycles_per_sample"] == pytest.approx(expected) != default
    tau = config.fl.training.local_steps
    for rp in out["plan"]["round_plans"]:
        # Each client's compute time tau c b / f, at the priced c, is the round's compute slot.
        times = [tau * expected * b / f for b, f in zip(rp["batches"], rp["clocks_hz"], strict=True)]
        assert max(times) == pytest.approx(rp["compute_s"], rel=1e-6)
    given = plan("allocation.cycles_per_sample=3.0e7")["cost_model"]
    assert given["source"] == "config" and given["cycles_per_sample"] == pytest.approx(3.0e7)


def test_check_lists_every_config_error_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    """configs/lab.yaml as shipped has three device-free errors (channel map, model, data): all
    three are reported by one `testbed check`, not one per try (issue 18 point 24)."""
    assert main(["check", str(ROOT / "configs" / "lab.yaml"), "--no-probe"]) == 2
    err = capsys.readouterr().err
    assert "3 config errors:" in err
    for words in (
        "allocation.channel_map: required",
        "fl.model.path: /models/open_llama_3b_v2",
        "fl.data.path",
    ):
        assert words in err
    assert "--only stages" in err
    assert "# channel_map: " in (ROOT / "configs" / "lab.yaml").read_text()


def test_check_only_stages_probes_lab_yaml_against_the_shell_emulators(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`testbed check configs/lab.yaml --only stages` reaches the stages although the rest of the
    config is not ready, and the emulators `python -m sim.serial_url grbl` serves by default fit
    lab.yaml's travel as shipped."""
    from sim.serial_url import serve

    lab = str(ROOT / "configs" / "lab.yaml")
    with serve("grbl", scale=50.0) as s0, serve("grbl", scale=50.0) as s1:
        ports = ["--set", f"lab.stages.ma0.port={s0.url}", "--set", f"lab.stages.ma1.port={s1.url}"]
        assert main(["--json", "check", lab, "--only", "stages", *ports]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["ok"] is True and [p["device"] for p in report["probes"]] == ["stage ma0", "stage ma1"]
    assert all("Grbl 1.1" in p["detail"] for p in report["probes"])
    # --only fl checks the files alone: the model and data of lab.yaml are not on this host
    assert main(["check", lab, "--only", "fl", "--no-probe"]) == 2
    err = capsys.readouterr().err
    assert "2 config errors:" in err and "channel_map" not in err
