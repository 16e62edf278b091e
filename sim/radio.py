"""``SimRadio``: the radio contract (``drivers.radio.Radio``) on the simulated medium.

One SimRadio is one node of a ``sim.medium.Medium``. Settings are checked before anything
reaches the medium: a TX gain above ``max_tx_gain_db`` raises ``RadioLimitError`` and leaves the
radio as it was. Gains map to amplitude through the medium's reference gains (see
``sim.medium``). Time is the medium's virtual clock as this radio's own clock reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from drivers.errors import RadioError
from drivers.radio import TIMING_CODES, Radio, RadioSettings, RxResult, TxResult
from sim.impairments import Impairments
from sim.links import IdealLinks
from sim.medium import Medium


def _check_tolerate(tolerate: Sequence[str]) -> tuple[str, ...]:
    codes = tuple(tolerate)
    unknown = [c for c in codes if c not in TIMING_CODES]
    if unknown:
        raise ValueError(f"tolerate={codes!r}: unknown code(s) {unknown}; allowed: {TIMING_CODES}")
    return codes


class SimRadio:
    """A simulated USRP: a client (one antenna) or the movable-antenna receiver (N antennas)."""

    def __init__(self, medium: Medium, node: str, settings: RadioSettings | None = None) -> None:
        self._medium = medium
        self.name = node
        self._node = medium.node(node)
        self._settings = RadioSettings()
        self._closed = False
        self.configure(settings if settings is not None else RadioSettings(rate_sps=medium.rate_sps))

    @classmethod
    def client(
        cls, medium: Medium, client: int, settings: RadioSettings | None = None, name: str | None = None
    ) -> SimRadio:
        """Add a client node (channel row ``client``) to the medium and return its radio."""
        node = name or f"client{client}"
        medium.add_client(node, client)
        return cls(medium, node, settings)

    @classmethod
    def receiver(
        cls,
        medium: Medium,
        num_antennas: int,
        positions_m: np.ndarray | object,
        settings: RadioSettings | None = None,
        name: str = "receiver",
    ) -> SimRadio:
        """Add the movable-antenna receiver (positions: array or callable) and return its radio."""
        medium.add_receiver(name, num_antennas, positions_m)  # type: ignore[arg-type]
        return cls(medium, name, settings)

    @property
    def medium(self) -> Medium:
        return self._medium

    @property
    def settings(self) -> RadioSettings:
        return self._settings

    @property
    def num_rx_channels(self) -> int:
        return self._node.num_antennas

    def _open(self) -> None:
        if self._closed:
            raise RadioError(f"radio {self.name!r} is closed; open a new one")

    def configure(self, settings: RadioSettings) -> None:
        self._open()
        checked = settings.checked()  # the TX gain cap, before anything reaches the medium
        self._medium.configure_node(
            self.name, checked.frequency_hz, checked.rate_sps, checked.tx_gain_db, checked.rx_gain_db
        )
        self._settings = checked

    def time_now(self) -> float:
        self._open()
        return self._medium.local_time_s(self.name)

    def set_time_next_pps(self, time_s: float) -> None:
        self._open()
        self._medium.set_time_next_pps(self.name, time_s)

    def set_time_unknown_pps(self, time_s: float) -> None:
        """One medium, one PPS: the same as ``set_time_next_pps``."""
        self.set_time_next_pps(time_s)

    def transmit(self, samples: np.ndarray, at_s: float, tolerate: Sequence[str] = ()) -> TxResult:
        self._open()
        return self._medium.schedule(self.name, samples, at_s, _check_tolerate(tolerate))

    def receive(
        self,
        num_samples: int,
        at_s: float,
        channels: Sequence[int] | None = None,
        timeout_s: float = 1.0,
        tolerate: Sequence[str] = (),
    ) -> RxResult:
        self._open()
        return self._medium.capture(
            self.name, num_samples, at_s, channels, timeout_s, _check_tolerate(tolerate)
        )

    def sensors(self) -> dict[str, bool | float | str]:
        self._open()
        return {
            "lo_locked": True,
            "ref_locked": True,
            "time_s": self.time_now(),
            "backend": "sim",
            "node": self.name,
        }

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> SimRadio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ideal_medium(seed: int = 0, rate_sps: float = 1e6) -> Medium:
    """A cabled, noiseless air: every link has gain 1 end to end at the default settings
    (TX gain 0 dB, RX gain 30 dB), no impairments. For contract tests and radio-server tests."""
    defaults = RadioSettings()
    return Medium(
        IdealLinks(1.0),
        np.random.default_rng(seed),
        rate_sps=rate_sps,
        noise_power_w=0.0,
        impairments=Impairments.none(),
        tx_gain_ref_db=defaults.tx_gain_db,
        rx_gain_ref_db=defaults.rx_gain_db,
    )


def build_sim_radios(
    specs: Sequence[tuple[str, int]],
    medium_address: str | None = None,
    seed: int = 0,
    medium: Medium | None = None,
) -> list[Radio]:
    """Radios named in ``specs`` as (name, rx channels) on one air.

    Without ``medium_address``: SimRadios on ``medium`` (default ``ideal_medium(seed)``); a
    one-channel radio is a client node (channel row = its index among the one-channel specs),
    a wider one a receiver. With ``medium_address``: ``RemoteRadio`` proxies to the radios of
    that medium server (``sim.medium_server``), which must already host those names.
    """
    if medium_address:
        from drivers.remote_radio import RemoteRadio  # lazy: in-process sim needs no ZeroMQ

        proxies: list[Radio] = []
        for name, channels in specs:
            proxy = RemoteRadio(medium_address, radio=name)
            if proxy.num_rx_channels != channels:
                proxy.close()
                raise RadioError(
                    f"medium server {medium_address}: radio {name!r} has {proxy.num_rx_channels} "
                    f"RX channels, not the {channels} asked for"
                )
            proxies.append(proxy)
        return proxies
    air = medium if medium is not None else ideal_medium(seed)
    radios: list[Radio] = []
    clients = 0
    for name, channels in specs:
        if channels < 1:
            raise ValueError(f"radio {name!r}: rx channels must be >= 1 (got {channels})")
        if channels == 1:
            radios.append(SimRadio.client(air, clients, name=name))
            clients += 1
        else:
            radios.append(SimRadio.receiver(air, channels, np.zeros((channels, 2)), name=name))
    return radios


__all__ = ["SimRadio", "build_sim_radios", "ideal_medium"]
