"""The stages as one rigid formation: move all antennas at once, wait, read back."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from testbed.config import TestbedConfig


class Formation(Protocol):
    """Moves all N antennas at once, in region coordinates, and waits until they have settled."""

    def move(self, positions_m: np.ndarray) -> np.ndarray:
        """Move antenna n to ``positions_m[n]``; return the positions read back (N x 2)."""
        ...

    def positions(self) -> np.ndarray:
        """The antennas' current positions (N x 2), e.g. for the sim medium to read."""
        ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class StageFormation:
    """The ``Formation`` over a ``StageArray`` (``testbed.stages.open_stages``, which homes): one
    simultaneous move of every stage (the array checks travel and clearance before anything is
    sent), a wait for all of them (each driver waits its settle time), then the positions read
    back."""

    def __init__(self, array: Any, config: TestbedConfig) -> None:
        self.array = array
        self.names = list(config.lab.stages)
        stages = list(config.lab.stages.values())
        scale = [s.sim_time_scale if s.backend == "sim" else 1.0 for s in stages]
        # The emulators run their clock sim_time_scale times faster than the wall clock.
        self.time_scale = min(scale)
        self.settle_s = max(s.settle_s / k for s, k in zip(stages, scale, strict=True))
        self.speed_m_s = min(s.max_speed_m_s for s in stages)
        self.accel_m_s2 = min(s.accel_m_s2 for s in stages)
        self.command_timeout_s = max(s.command_timeout_s for s in stages)
        self._last: np.ndarray | None = None

    def move_time_s(self, distance_m: float) -> float:
        """Modeled wall time of a rest-to-rest move (the emulators' scaled clock included)."""
        from sim.motion import move_time_s

        return move_time_s(distance_m, self.speed_m_s, self.accel_m_s2) / self.time_scale

    def move(self, positions_m: np.ndarray) -> np.ndarray:
        from drivers.positioner import wait_all

        pos = np.asarray(positions_m, dtype=float).reshape(-1, 2)
        targets = {name: (float(x), float(y)) for name, (x, y) in zip(self.names, pos, strict=True)}
        here = self._last if self._last is not None else self.positions()
        distance = float(np.max(np.hypot(*(pos - here).T)))
        # Generous: the array may run the moves in batches, and a real stage is not a model.
        timeout = self.command_timeout_s + len(self.names) * 3.0 * self.move_time_s(distance) + 5.0
        wait_all(self.array.move_all(targets), timeout)
        self._last = self.positions()
        return self._last

    def positions(self) -> np.ndarray:
        read = self.array.positions()
        return np.asarray([read[name] for name in self.names], dtype=float)

    def stop(self) -> None:
        self._last = None
        self.array.stop_all()

    def close(self) -> None:
        self.array.close()


def open_formation(config: TestbedConfig) -> StageFormation:
    """The stages as one formation (``open_stages`` homes those with ``home_on_start``)."""
    from testbed.stages import open_stages

    return StageFormation(open_stages(config), config)
