"""Config loading: every section, --set overrides, and clear errors for bad input."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.errors import ConfigError
from testbed.config import TestbedConfig, apply_overrides, load_config, to_yaml, validate

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["dryrun.yaml", "lab.yaml", "paper.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(CONFIGS / name)
    assert isinstance(config, TestbedConfig)


def test_dryrun_is_all_sim_with_the_demo_shape() -> None:
    c = load_config(CONFIGS / "dryrun.yaml")
    assert {s.backend for s in c.lab.stages.values()} == {"sim"}
    assert c.lab.receiver.backend == "sim" and c.lab.clients.radio.backend == "sim"
    assert c.lab.num_antennas == 4 and c.lab.clients.count == 4
    assert c.allocation.clients_per_round == 2 and c.fl.rounds == 5
    assert c.fl.model.source == "tiny"


def test_lab_template_describes_real_hardware() -> None:
    c = load_config(CONFIGS / "lab.yaml")
    assert c.lab.stages["ma0"].backend == "grbl" and c.lab.stages["ma0"].port == "/dev/ttyUSB0"
    assert c.lab.receiver.backend == "usrp" and c.lab.receiver.clock_source == "external"
    assert c.lab.receiver.time_source == "external"
    assert len(c.lab.clients.radio_servers) == c.lab.clients.count


def test_every_section_reads_from_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
run: {name: t1, seed: 3, output_dir: out, log_level: DEBUG}
lab:
  stages: {a: {backend: zaber, port: "socket://127.0.0.1:9", travel_m: 0.3, zaber_address: 2}}
  array: {carrier_hz: 5.8e9, region_wavelengths: 3, min_spacing_wavelengths: 0.4}
  receiver: {backend: usrp, args: "type=b200", rx_gain_db: 20}
  clients: {count: 6, tx_power_w: 0.2, radio: {tx_gain_db: 10}}
  medium: {paths: 5, rician_k: 2, impairments: {awgn: false, dac_clipping: false}}
allocation: {clients_per_round: 3, selection: pdd, energy_budget_j: 10}
fl:
  rounds: 7
  aggregation: digital
  model: {source: pretrained, path: /m, dtype: bfloat16}
  lora: {r: 16, alpha: 32, mode: standard}
  data: {source: dolly, path: /d.jsonl, partition: category}
  training: {lr: 1.0e-4, local_steps: 2}
  transport: {bind: "tcp://127.0.0.1:6000", heartbeat_s: 0.5}
campaign: {step_wavelengths: 0.5, order: raster, pilots: simultaneous}
""",
    )
    c = load_config(path)
    assert c.run.name == "t1" and c.run.seed == 3 and c.run.output_dir == Path("out")
    assert c.lab.stages["a"].backend == "zaber" and c.lab.stages["a"].zaber_address == 2
    assert c.lab.array.wavelength_m == pytest.approx(299_792_458.0 / 5.8e9)
    assert c.lab.array.region_m == pytest.approx(3 * c.lab.array.wavelength_m)
    assert c.lab.receiver.backend == "usrp" and c.lab.receiver.rx_gain_db == 20
    assert c.lab.clients.count == 6 and c.lab.clients.radio.tx_gain_db == 10
    assert c.lab.medium.paths == 5 and c.lab.medium.impairments.awgn is False
    assert c.allocation.clients_per_round == 3 and c.allocation.selection == "pdd"
    assert c.fl.rounds == 7 and c.fl.lora.r == 16 and c.fl.data.partition == "category"
    assert c.fl.transport.heartbeat_s == 0.5
    assert c.campaign.order == "raster" and c.campaign.pilots == "simultaneous"


def test_set_overrides_parse_values_as_yaml() -> None:
    c = load_config(
        CONFIGS / "dryrun.yaml",
        [
            "fl.rounds=3",
            "lab.stages.ma0.backend=grbl",
            "lab.stages.ma0.port=socket://127.0.0.1:2323",
            "lab.medium.impairments.awgn=false",
            "lab.stages.ma1.origin_m=[0.0, 0.1]",
            "run.name=override-test",
        ],
    )
    assert c.fl.rounds == 3
    assert c.lab.stages["ma0"].backend == "grbl" and c.lab.stages["ma0"].port == "socket://127.0.0.1:2323"
    assert c.lab.medium.impairments.awgn is False
    assert c.lab.stages["ma1"].origin_m == (0.0, 0.1)
    assert c.run.name == "override-test"


def test_overrides_do_not_touch_the_input_mapping() -> None:
    data = {"fl": {"rounds": 2}}
    out = apply_overrides(data, ["fl.rounds=9"])
    assert data == {"fl": {"rounds": 2}} and out == {"fl": {"rounds": 9}}


def test_resolved_config_round_trips_through_yaml() -> None:
    c = load_config(CONFIGS / "lab.yaml")
    again = validate(yaml.safe_load(to_yaml(c)), "resolved")
    assert again == c


# Each bad input, with (a part of) the message it must give.
BAD_OVERRIDES = [
    ("lab.stages.ma0.travel_m=-0.2", "lab.stages.ma0.travel_m: must be > 0.0 (got -0.2)"),
    (
        "lab.stages.ma0.backend=stepper",
        "lab.stages.ma0.backend: must be one of 'sim', 'grbl' or 'zaber' (got 'stepper')",
    ),
    ("lab.receiver.backend=hackrf", "lab.receiver.backend: must be one of 'sim' or 'usrp' (got 'hackrf')"),
    ("fl.rounds=abc", "fl.rounds: input should be a valid integer"),
    ("fl.rounds=0", "fl.rounds: must be >= 1 (got 0)"),
    ("run.seed=-1", "run.seed: must be >= 0 (got -1)"),
    ("lab.foo=1", "lab.foo: unknown key; allowed here: array, clients, medium, receiver, stages"),
    ("lab.stages.ma0.travl_m=0.1", "lab.stages.ma0.travl_m: unknown key; allowed here: accel_m_s2"),
    ("fl.lora.dropout=1.5", "fl.lora.dropout: must be <= 1.0 (got 1.5)"),
    ("lab.clients.radio.tx_gain_db=80", "tx_gain_db=80.0 exceeds max_tx_gain_db=70.0"),
    ("allocation.clients_per_round=9", "allocation.clients_per_round=9 exceeds lab.clients.count=4"),
    ("lab.clients.distance_m=[50, 10]", "distance_m must be (min, max) with min <= max"),
    (
        "lab.receiver.clock_source=atomic",
        "lab.receiver.clock_source: must be one of 'internal', 'external' or 'gpsdo'",
    ),
    ("run.name=has space", "run.name: must match"),
    ("lab.array.carrier_hz=.nan", "lab.array.carrier_hz: must be a finite number"),
    ("lab.stages={}", "at least one stage (receive antenna) is needed"),
    ("fl.lora.target_modules=q_proj", "fl.lora.target_modules: input should be a valid list"),
    ("lab.clients.radio_servers=[tcp://a:1]", "radio_servers lists 1 addresses for 4 clients"),
]


@pytest.mark.parametrize(("override", "message"), BAD_OVERRIDES)
def test_bad_values_name_file_field_value_and_rule(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "dryrun.yaml", [override])
    text = str(info.value)
    assert text.startswith(str(CONFIGS / "dryrun.yaml")), text
    assert message in text, text


def test_the_issue_example_message(tmp_path: Path) -> None:
    path = write(tmp_path, "lab:\n  stages:\n    x: {travel_m: -0.2}\n", "lab.yaml")
    with pytest.raises(
        ConfigError, match=r"lab\.yaml: lab\.stages\.x\.travel_m: must be > 0\.0 \(got -0\.2\)"
    ):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file"):
        load_config("nope.yaml")


def test_bad_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "run:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML at line \d+, column \d+"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- 1\n- 2\n")
    with pytest.raises(
        ConfigError, match=r"c\.yaml: the top level must be a mapping of sections \(got list\)"
    ):
        load_config(path)


def test_wrong_section_type(tmp_path: Path) -> None:
    path = write(tmp_path, "lab: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: lab: input should be a valid dictionary"):
        load_config(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"run:\n  name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fl.rounds", "expected a.b.c=value"),
        ("fl..rounds=1", "empty name"),
        ("fl.rounds=[1", "not valid YAML"),
    ],
)
def test_malformed_set_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "dryrun.yaml", [override])


def test_override_into_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"fl\.rounds is a value, not a section"):
        load_config(CONFIGS / "dryrun.yaml", ["fl.rounds.x=1"])


yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=8)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
section_names = st.sampled_from(["run", "lab", "allocation", "fl", "campaign", "stages", "x"])
field_names = st.sampled_from(
    ["name", "seed", "stages", "receiver", "rounds", "lora", "r", "backend", "travel_m"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        section_names | st.text(max_size=6),
        st.dictionaries(field_names | st.text(max_size=6), yaml_values, max_size=4) | yaml_values,
        max_size=4,
    )
)
def test_no_random_mapping_raises_anything_but_config_error(data: dict) -> None:
    try:
        validate(data, "random.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("random.yaml")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_no_random_yaml_text_raises_anything_but_config_error(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.yaml"
        path.write_text(text, encoding="utf-8")
        with contextlib.suppress(ConfigError):
            load_config(path)


@pytest.mark.parametrize("name", ["dryrun.yaml", "lab.yaml", "paper.yaml", "campaign.yaml"])
def test_shipped_configs_home_the_stages_apart(name: str) -> None:
    """No two homed corners closer than D (paper.yaml once had four at one spot)."""
    lab = load_config(CONFIGS / name).lab
    names = list(lab.stages)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            gap = math.dist(lab.stages[a].origin_m, lab.stages[b].origin_m)
            assert gap >= lab.array.min_spacing_m, (name, a, b, gap)


def test_stage_origins_closer_than_the_spacing_are_an_error(tmp_path: Path) -> None:
    text = """
lab:
  array: {allow_overlapping_travel: true}
  stages: {ma0: {origin_m: [-0.25, -0.25]}, ma1: {origin_m: [-0.23, -0.25]}}
"""
    with pytest.raises(ConfigError, match=r"c.yaml: lab.stages.ma0.origin_m=\[-0.25, -0.25\] and "
                       r"lab.stages.ma1.origin_m=\[-0.23, -0.25\] are 20.0 mm apart.*homing would collide"):  # fmt: skip
        load_config(write(tmp_path, text))


def test_overlapping_travel_is_an_error_unless_the_config_allows_it(tmp_path: Path) -> None:
    text = """
lab:
  stages:
    ma0: {origin_m: [-0.25, -0.25], travel_m: 0.3}
    ma1: {origin_m: [0.0, -0.25], travel_m: 0.3}
"""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "lab.stages.ma0 and lab.stages.ma1" in msg
    assert "overlap over x 0.000..0.050 m, y -0.250..0.050 m" in msg
    assert "lab.array.allow_overlapping_travel: true" in msg
    allowed = load_config(path, ["lab.array.allow_overlapping_travel=true"])
    assert allowed.lab.array.allow_overlapping_travel
    # Travel squares that do not overlap but come closer than D are refused too.
    near = ["lab.stages.ma1.origin_m=[0.1, -0.25]", "lab.stages.ma0.travel_m=0.32"]
    with pytest.raises(ConfigError, match="come 30.0 mm close"):
        load_config(path, near)
    apart = load_config(path, ["lab.stages.ma1.origin_m=[0.2, -0.25]", "lab.stages.ma0.travel_m=0.3"])
    assert not apart.lab.array.allow_overlapping_travel


def test_the_built_in_stages_share_the_region_explicitly() -> None:
    c = load_config(None)
    assert c.lab.array.allow_overlapping_travel  # the default four sim stages roam the whole region
    with pytest.raises(ConfigError, match="allow_overlapping_travel"):
        load_config(None, ["lab.array.allow_overlapping_travel=false"])
