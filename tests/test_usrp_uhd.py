"""Against the real python3-uhd under the system Python (skipped where it is not installed).

1. Every uhd class, method, field and enum value the USRP driver (``drivers/usrp*.py``) uses
   (``UHD_API_USED``) exists in the installed module, and the constructors take the arguments
   the driver passes.
2. The fake uhd the driver tests run on (``tests/fake_uhd.py``) has the real module's names,
   kinds, pybind11 signatures (each ``__doc__``'s signature lines), field writability and enum
   values: a fake kinder than uhd fails here.
3. The real radio server, asked for a B200 when none is attached, answers every caller with a
   clear ``RadioError`` naming the args and UHD's reason, and keeps serving.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from radio_server_proc import REPO, SYSTEM_PYTHON, ServerProcess

from drivers.errors import RadioError
from drivers.remote_radio import RemoteRadio


def _system_uhd() -> bool:
    try:
        done = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import uhd, zmq, numpy"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


pytestmark = [
    pytest.mark.uhd,
    pytest.mark.skipif(not _system_uhd(), reason="the system Python has no python3-uhd"),
]

INTROSPECT = r"""
import json
import uhd
from drivers.usrp_metadata import UHD_API_USED
from drivers.usrp_timing import split_time

missing = []
for owner, names in UHD_API_USED.items():
    module, cls = owner.split(".")
    obj = getattr(getattr(uhd, module), cls, None)
    if obj is None:
        missing.append(owner)
        continue
    missing += [f"{owner}.{n}" for n in names if not hasattr(obj, n)]

# The constructors as the driver calls them.
t = uhd.types
ts = t.TimeSpec(*split_time(12.25))
cmd = t.StreamCMD(t.StreamMode.num_done)
cmd.num_samps, cmd.stream_now, cmd.time_spec = 100, False, ts
args = uhd.usrp.StreamArgs("fc32", "sc16")
args.channels = [0, 1]
md = t.TXMetadata()
md.start_of_burst, md.end_of_burst, md.has_time_spec, md.time_spec = True, True, True, ts
sensor = t.SensorValue("ref_locked", True, "locked", "unlocked")
real = t.SensorValue("temp", 3.5, "C", "%f")
print(json.dumps({
    "missing": missing,
    "time": ts.get_real_secs(),
    "cmd_time": cmd.time_spec.get_real_secs(),
    "channels": list(args.channels),
    "tune": t.TuneRequest(2.4e9).target_freq,
    "sensor_types": [sensor.type.name, real.type.name],
    "rx_none": t.RXMetadata().error_code.name,
}))
"""


def test_every_uhd_name_the_driver_uses_exists() -> None:
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", INTROSPECT], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["missing"] == []
    assert report["time"] == pytest.approx(12.25) and report["cmd_time"] == pytest.approx(12.25)
    assert report["channels"] == [0, 1] and report["tune"] == 2.4e9
    assert report["sensor_types"] == ["b", "r"]  # what sensor_value() branches on
    assert report["rx_none"] == "none"  # enum_name() reads .name


COMPARE = r"""
import json, sys
sys.path.insert(0, "tests")
from fake_uhd import describe_fake, describe_real
fake = describe_fake()
print(json.dumps({"fake": fake, "real": describe_real(fake)}))
"""


def test_the_fake_uhd_matches_the_real_module() -> None:
    from fake_uhd import describe_fake

    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", COMPARE], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    both = json.loads(done.stdout.strip().splitlines()[-1])
    fake, real = both["fake"], both["real"]
    assert fake == json.loads(json.dumps(describe_fake()))  # the same fake on both Pythons
    diverging = [
        f"uhd.{owner}.{name}: fake {spec} != real {real[owner].get(name, 'missing')}"
        for owner, members in fake.items()
        for name, spec in members.items()
        if real[owner].get(name) != spec
    ]
    assert not diverging, "the fake uhd diverges from python3-uhd:\n" + "\n".join(diverging)
    assert sum(len(m) for m in fake.values()) > 90  # the comparison covers the whole fake


def test_no_device_attached_is_a_clear_radio_error_at_the_client() -> None:
    proc = ServerProcess(
        ["--args", "type=b200", "--bind", "tcp://127.0.0.1:*", "--insecure"], python=SYSTEM_PYTHON
    )
    try:
        for _ in range(2):  # the server keeps serving the reason (and retrying the device)
            start = time.monotonic()
            with pytest.raises(
                RadioError, match=r"could not open a USRP with args 'type=b200'.*No devices found"
            ):
                RemoteRadio(proc.endpoint, rpc_timeout_s=5.0)
            assert time.monotonic() - start < 5.0 + 10.0  # bounded (no hang); slack for a loaded machine
        assert proc.proc.poll() is None
    finally:
        assert proc.stop() == 0


def test_usrp_section_without_server_starts_one_and_reports_no_device() -> None:
    from testbed.config import RadioSection
    from testbed.radios import open_radio, probe_radio

    section = RadioSection(backend="usrp", args="type=b200")
    with pytest.raises(RadioError, match="No devices found"):
        open_radio(section, "client0")
    with pytest.raises(RadioError, match="could not open a USRP"):
        probe_radio("client 0 radio", section)
