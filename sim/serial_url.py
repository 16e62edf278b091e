"""Serve the stage emulators as serial ports: pyserial URLs and a TCP server.

``install()`` registers two URL schemes with pyserial (through ``protocol_handler_packages``):

    serial.serial_for_url("grblsim://ma0?scale=50")    # GRBL emulator named "ma0"
    serial.serial_for_url("zabersim://ma1?scale=50")   # Zaber ASCII emulator named "ma1"

A name stands for one emulated controller, kept in a registry, so reopening the URL reaches the
same device (as reopening ``/dev/ttyUSB0`` reaches the same board). The first open creates it
from the query options (``scale``, ``travel_mm``, ``homing``; ``register()`` puts a prepared
device in place instead). Opening a ``grblsim://`` port with DTR high (pyserial's default) resets
the device, as an Arduino's DTR auto-reset does, and so does raising DTR while open; a port opened
with DTR set low first (``port.dtr = False`` before ``open()``, as ``drivers.serial_link.open_port``
does) leaves it running, as on a board whose adapter does not pulse DTR in open(2)
(``reset_on_open=0`` turns the reset off altogether). A Zaber controller does not reset.

``EmulatorTcpServer`` serves a device on ``127.0.0.1:<port>`` for pyserial's ``socket://``, so
other processes (or a GUI sender such as UGS/bCNC) can talk to it;
``python -m sim.serial_url grbl --port 23000 --scale 1`` runs one from the shell, with the travel
``configs/lab.yaml`` ships (``--travel-mm``, ``--no-homing``, ``--no-reset``: see ``--help``). A
client that connects while another is served is told the port is busy and let go (one client
at a time, as a serial-over-TCP bridge).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
import types
import urllib.parse

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

# the transport imports its devices, never the reverse: the devices build on sim.endpoint alone
from sim.endpoint import EmulatedDevice, LinkDown
from sim.grbl_device import GrblDevice
from sim.zaber_device import ZaberDevice

_HANDLER_PACKAGE = "sim._serial_url_handlers"


_registry: dict[tuple[str, str], EmulatedDevice] = {}
_registry_lock = threading.Lock()


def register(scheme: str, name: str, device: EmulatedDevice) -> str:
    """Put ``device`` behind ``<scheme>://<name>``; return that URL (without options)."""
    if scheme not in _FACTORIES:
        raise ValueError(f"unknown emulator scheme {scheme!r}; allowed: {sorted(_FACTORIES)}")
    with _registry_lock:
        _registry[(scheme, name)] = device
    install()
    return f"{scheme}://{name}"


def unregister(scheme: str, name: str) -> None:
    with _registry_lock:
        _registry.pop((scheme, name), None)


def registered() -> list[tuple[str, str]]:
    """The (scheme, name) of every emulator currently behind a URL."""
    with _registry_lock:
        return sorted(_registry)


def device_for(scheme: str, name: str) -> EmulatedDevice | None:
    with _registry_lock:
        return _registry.get((scheme, name))


def _make_grbl(name: str, opts: dict[str, str]) -> EmulatedDevice:
    travel = float(opts.get("travel_mm", 500.0))
    return GrblDevice(
        time_scale=float(opts.get("scale", 1.0)),
        travel_mm=(travel, travel),
        homing=opts.get("homing", "1") != "0",
        name=name,
    )


def _make_zaber(name: str, opts: dict[str, str]) -> EmulatedDevice:
    travel = float(opts.get("travel_mm", 500.0))
    return ZaberDevice(time_scale=float(opts.get("scale", 1.0)), travel_mm=(travel, travel), name=name)


_FACTORIES = {"grblsim": _make_grbl, "zabersim": _make_zaber}
_OPTIONS = {"scale", "travel_mm", "homing", "reset_on_open"}


class EmulatorSerial(SerialBase):
    """A pyserial port whose other end is an emulator in this process."""

    scheme = ""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - pyserial's signature
        self._device: EmulatedDevice | None = None
        self._resets_on_dtr = False
        self._dtr_now = True
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        self._device, reset = self._from_url(self.portstr)
        self._resets_on_dtr = reset
        # an Arduino resets on DTR's rising edge: opening with DTR high is one, DTR held low is not
        if reset and self._dtr_state:
            self._device.power_cycle()
        self._dtr_now = self._dtr_state
        self.is_open = True

    def close(self) -> None:
        self.is_open = False
        self._device = None

    def _reconfigure_port(self) -> None:
        pass  # baud rate, framing: a real link needs them, the emulator does not

    def _from_url(self, url: str) -> tuple[EmulatedDevice, bool]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != self.scheme:
            raise SerialException(f"expected a {self.scheme}:// URL, got {url!r}")
        name = parts.netloc + parts.path
        if not name:
            raise SerialException(f"{url!r}: name the emulated device, e.g. {self.scheme}://ma0")
        opts: dict[str, str] = {}
        for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
            if key not in _OPTIONS:
                raise SerialException(f"{url!r}: unknown option {key!r}; allowed: {sorted(_OPTIONS)}")
            opts[key] = values[0]
        with _registry_lock:
            device = _registry.get((self.scheme, name))
            if device is None:
                try:
                    device = _FACTORIES[self.scheme](name, opts)
                except ValueError as exc:
                    raise SerialException(f"{url!r}: bad option value ({exc})") from exc
                _registry[(self.scheme, name)] = device
        default_reset = "1" if getattr(device, "resets_on_open", False) else "0"
        return device, opts.get("reset_on_open", default_reset) != "0"

    def _dev(self) -> EmulatedDevice:
        if not self.is_open or self._device is None:
            raise PortNotOpenError()
        return self._device

    @property
    def in_waiting(self) -> int:
        try:
            return self._dev().in_waiting()
        except LinkDown as exc:
            raise SerialException(str(exc)) from exc

    def read(self, size: int = 1) -> bytes:
        dev = self._dev()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        data = bytearray()
        try:
            while len(data) < size:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                chunk = dev.read(size - len(data), left)
                data += chunk
                if not chunk and (deadline is None or time.monotonic() >= deadline):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
        except LinkDown as exc:
            if data:
                return bytes(data)
            raise SerialException(f"{self.portstr}: {exc}") from exc
        return bytes(data)

    def write(self, data: bytes) -> int:
        dev = self._dev()
        try:
            return dev.write(bytes(data))
        except LinkDown as exc:
            raise SerialException(f"{self.portstr}: {exc}") from exc

    def reset_input_buffer(self) -> None:
        self._dev().reset_input()

    def reset_output_buffer(self) -> None:
        self._dev()

    @property
    def out_waiting(self) -> int:
        return 0

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True

    def _update_dtr_state(self) -> None:
        rising = self._dtr_state and not self._dtr_now
        self._dtr_now = self._dtr_state
        if rising and self._resets_on_dtr and self._device is not None:
            self._device.power_cycle()

    def _update_rts_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass


class GrblSimSerial(EmulatorSerial):
    scheme = "grblsim"


class ZaberSimSerial(EmulatorSerial):
    scheme = "zabersim"


def install() -> None:
    """Make ``serial.serial_for_url`` understand ``grblsim://`` and ``zabersim://``.

    pyserial imports ``<package>.protocol_<scheme>`` for each package it is told about; the two
    handler modules are built here and placed in ``sys.modules`` so no stub files are needed.
    """
    if _HANDLER_PACKAGE in sys.modules:
        return
    package = types.ModuleType(_HANDLER_PACKAGE)
    package.__path__ = []  # a package, so pyserial's relative import resolves
    sys.modules[_HANDLER_PACKAGE] = package
    for scheme, cls in (("grblsim", GrblSimSerial), ("zabersim", ZaberSimSerial)):
        module = types.ModuleType(f"{_HANDLER_PACKAGE}.protocol_{scheme}")
        module.Serial = cls  # type: ignore[attr-defined]
        sys.modules[module.__name__] = module
    if _HANDLER_PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(_HANDLER_PACKAGE)


class EmulatorTcpServer:
    """Serve one emulator on a loopback TCP port (one client at a time) for ``socket://``."""

    def __init__(self, device: EmulatedDevice, host: str = "127.0.0.1", port: int = 0,
                 reset_on_connect: bool | None = None) -> None:  # fmt: skip
        self.device = device
        # None: do what the real board does when a host connects (an Arduino resets, Zaber not).
        self.reset_on_connect = (
            getattr(device, "resets_on_open", False) if reset_on_connect is None else reset_on_connect
        )
        self._sock = socket.create_server((host, port))
        self._sock.settimeout(0.1)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"emulator-tcp-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()

    def __enter__(self) -> EmulatorTcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        busy = threading.Lock()
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not busy.acquire(blocking=False):
                # one client at a time, as a serial-over-TCP bridge: a second is told and let go
                # (a moment after it connects: pyserial's socket open drops what is there already)
                threading.Thread(target=self._turn_away, args=(conn,), daemon=True).start()
                continue

            def serve_one(conn: socket.socket = conn) -> None:
                try:
                    with conn:
                        if self.reset_on_connect:
                            self.device.power_cycle()
                        self._pump(conn)
                finally:
                    busy.release()

            threading.Thread(target=serve_one, name=f"emulator-tcp-client-{self.port}", daemon=True).start()

    @staticmethod
    def _turn_away(conn: socket.socket) -> None:
        time.sleep(0.2)
        with conn, contextlib.suppress(OSError):
            conn.sendall(b"port busy: another client is connected to this emulator\r\n")
            time.sleep(0.2)

    def _pump(self, conn: socket.socket) -> None:
        done = threading.Event()

        def inbound() -> None:  # socket -> device, on its own thread so replies flow at once
            try:
                while not done.is_set():
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    if not data:
                        break  # client closed
                    self.device.write(data)
            except (LinkDown, OSError):
                pass
            done.set()

        conn.settimeout(0.1)
        reader = threading.Thread(target=inbound, name=f"emulator-tcp-in-{self.port}", daemon=True)
        reader.start()
        try:
            while not done.is_set() and not self._stop.is_set():
                data = self.device.read(4096, 0.05)
                if data:
                    conn.sendall(data)
        except (LinkDown, OSError):
            pass
        done.set()
        reader.join(timeout=1.0)


# what configs/lab.yaml ships: travel_m 0.6 (GRBL's $130 = 600 mm + the 1 mm pull-off $27)
SHELL_TRAVEL_MM = 600.0


def serve(kind: str, port: int = 0, scale: float = 1.0, travel_mm: float = SHELL_TRAVEL_MM,
          homing: bool = True, reset_on_connect: bool = True) -> EmulatorTcpServer:  # fmt: skip
    """One emulator behind ``socket://127.0.0.1:<port>``, as ``python -m sim.serial_url`` runs it."""
    opts = {"scale": str(scale), "travel_mm": str(travel_mm), "homing": "1" if homing else "0"}
    device = _make_grbl("tcp", opts) if kind == "grbl" else _make_zaber("tcp", opts)
    return EmulatorTcpServer(
        device, port=port, reset_on_connect=reset_on_connect if kind == "grbl" else False
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Serve a stage emulator on a TCP port (socket://). Two for configs/lab.yaml's stages: "
        "`python -m sim.serial_url grbl --port 23000` and `... --port 23001`, then "
        "`testbed check configs/lab.yaml --only stages --set lab.stages.ma0.port=socket://127.0.0.1:23000 "
        "--set lab.stages.ma1.port=socket://127.0.0.1:23001`."
    )
    parser.add_argument("kind", choices=["grbl", "zaber"])
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--scale", type=float, default=1.0, help="clock speed-up over real time")
    parser.add_argument(
        "--travel-mm", type=float, default=SHELL_TRAVEL_MM,
        help="usable travel per axis (default: configs/lab.yaml's travel_m 0.6; GRBL's $13x adds the pull-off)",
    )  # fmt: skip
    parser.add_argument("--no-homing", action="store_true", help="GRBL without homing switches ($22=0)")
    parser.add_argument(
        "--no-reset", action="store_true",
        help="GRBL: keep running when a client connects (default: restart, as an Arduino does on open)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    server = serve(args.kind, args.port, args.scale, args.travel_mm, not args.no_homing, not args.no_reset)
    print(f"{args.kind} emulator at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
