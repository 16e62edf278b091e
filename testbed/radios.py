"""From a config's ``RadioSection`` to a ``Radio``: sim on a medium, or a USRP behind its server.

- ``backend: sim`` with ``server: ''``: a ``SimRadio`` on the medium the lab built (its node
  ``name``: ``client<k>`` or ``receiver`` for ``Medium.from_config``).
- ``backend: sim`` with a server: the node ``name`` of a medium/radio server, via ``RemoteRadio``.
- ``backend: usrp`` with a server: the USRP that radio server owns (``python3 -m
  drivers.usrp_server --args ...`` on the host wired to it), via ``RemoteRadio``.
- ``backend: usrp`` with ``server: ''``: a radio server is started here under the system Python
  (Debian's python3-uhd cannot load in the venv), on loopback, and stopped on ``close()``.

Every radio is configured from the section before it is returned, so a TX gain above
``max_tx_gain_db`` or an antenna the device lacks fails here, with the section's words.
"""

from __future__ import annotations

import subprocess
from typing import Any

from drivers.errors import ConfigError, RadioError, TestbedError
from drivers.radio import Radio, RadioSettings
from drivers.remote_radio import RemoteRadio
from drivers.usrp_server import spawn_server, stop_server
from drivers.zmq_security import is_loopback
from testbed.config import RadioSection


def radio_settings(section: RadioSection) -> RadioSettings:
    return RadioSettings(
        frequency_hz=section.frequency_hz,
        rate_sps=section.rate_sps,
        tx_gain_db=section.tx_gain_db,
        rx_gain_db=section.rx_gain_db,
        max_tx_gain_db=section.max_tx_gain_db,
        clock_source=section.clock_source,
        time_source=section.time_source,
        tx_antenna=section.tx_antenna,
        rx_antenna=section.rx_antenna,
    )


def _remote(section: RadioSection, address: str, radio: str | None) -> Radio:
    if bool(section.client_key) != bool(section.server_key):
        raise ConfigError(
            f"radio server {address}: set both client_key (this caller's .key_secret) and "
            f"server_key (the server's .key), or neither (got client_key={section.client_key!r}, "
            f"server_key={section.server_key!r})"
        )
    if not section.client_key and not is_loopback(address):
        raise ConfigError(
            f"radio server {address} is not on loopback, so CURVE is required: set client_key and "
            "server_key in this radio section (`testbed keys` makes them)"
        )
    return RemoteRadio(
        address,
        radio=radio,
        secret_key_file=section.client_key or None,
        server_public_key_file=section.server_key or None,
        rpc_timeout_s=section.rpc_timeout_s,
    )


class _LocalServerRadio(RemoteRadio):
    """A ``RemoteRadio`` to a radio server this process started; ``close()`` stops the server."""

    def __init__(self, process: subprocess.Popen, endpoint: str, rpc_timeout_s: float) -> None:
        self._process = process
        try:
            super().__init__(endpoint, rpc_timeout_s=rpc_timeout_s)
        except BaseException:
            stop_server(process)
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            stop_server(self._process)


def _local_usrp(section: RadioSection, name: str) -> Radio:
    argv = ["--args", section.args, "--name", name, "--bind", "tcp://127.0.0.1:*", "--insecure"]
    process, endpoint = spawn_server(argv)
    return _LocalServerRadio(process, endpoint, section.rpc_timeout_s)


def open_radio(section: RadioSection, name: str, medium: Any = None) -> Radio:
    """The radio a section describes, configured from it (see the module docstring)."""
    if section.backend == "sim" and not section.server:
        if medium is None:
            raise ConfigError(
                f"radio {name!r}: backend sim with no server needs the lab's medium "
                "(testbed builds it from lab.medium), or set server to a medium server's address"
            )
        from sim.radio import SimRadio

        if name not in medium.node_names:
            raise ConfigError(f"radio {name!r}: the medium has no such node; it has {medium.node_names}")
        return SimRadio(medium, name, radio_settings(section))
    if section.backend == "sim":
        radio = _remote(section, section.server, name)
    elif section.server:
        radio = _remote(section, section.server, None)  # a USRP server hosts its one radio
    else:
        radio = _local_usrp(section, name)
    try:
        radio.configure(radio_settings(section))
    except BaseException:
        radio.close()
        raise
    return radio


def probe_radio(label: str, section: RadioSection) -> str:
    """For ``testbed check``: reach the radio, read its clock and sensors, and close it.

    Raises ``TestbedError`` (the caller reports it) when the radio cannot be reached or opened.
    """
    if section.backend == "sim" and not section.server:
        return "simulated, in process (no device to reach)"
    radio = _remote(section, section.server, None) if section.server else _local_usrp(section, label)
    try:
        time_s = radio.time_now()
        sensors = radio.sensors()
        locked = {k: v for k, v in sensors.items() if k.endswith("locked")}
        where = section.server or "a local radio server"
        return (
            f"{getattr(radio, 'backend', '') or section.backend} '{radio.name}' at {where}: "
            f"{radio.num_rx_channels} RX channels, device time {time_s:.6f} s, locks {locked}"
        )
    except TestbedError:
        raise
    except Exception as exc:  # keep `testbed check` going: report, don't crash
        raise RadioError(f"{label}: probe failed: {type(exc).__name__}: {exc}") from exc
    finally:
        radio.close()
