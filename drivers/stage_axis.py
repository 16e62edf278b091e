"""One axis of one stage of a ``StageArray`` as a bluesky device (``StageAxis``)."""

from __future__ import annotations

import time

from drivers.positioner import MoveStatus, Positioner, run_in_thread
from drivers.stage_array import StageArray


class StageAxis:
    """One axis of one stage of a ``StageArray`` as a bluesky device: Movable, Locatable,
    Readable, Stoppable.

    ``set(v)`` moves that axis to ``v`` metres in region coordinates (the other axis stays)
    through ``StageArray.move_all``, so a bluesky move passes the same gate as every other move:
    travel, speed and the clearance to every other antenna along the whole path, checked before
    any byte is sent. A bare ``Positioner`` is refused: alone it cannot know where the other
    antennas are. ``grid_scan(dets, StageAxis(a, "ma0", 0), ..., StageAxis(a, "ma0", 1), ...)``
    rasters one antenna.
    """

    def __init__(
        self,
        array: StageArray,
        stage: str,
        axis: int,
        *,
        name: str | None = None,
        speed_m_s: float | None = None,
    ) -> None:
        if not isinstance(array, StageArray):
            raise TypeError(
                f"StageAxis needs the StageArray its stage belongs to, so every move passes the array's "
                f"clearance check (got {type(array).__name__}); for one stage alone use "
                "StageArray({name: stage}, {name: (0.0, 0.0)}, min_spacing_m=0.0)"
            )
        if stage not in array.stages:
            raise ValueError(f"no stage {stage!r} in the array; stages are {array.names}")
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 (x) or 1 (y), got {axis!r}")
        self.array = array
        self.stage_name = stage
        self.axis = axis
        self.name = name or f"{stage}_{'xy'[axis]}"
        self.parent = None
        self.speed_m_s = speed_m_s
        self._setpoint: float | None = None

    @property
    def stage(self) -> Positioner:
        return self.array.stages[self.stage_name]

    @property
    def hints(self) -> dict[str, list[str]]:
        return {"fields": [self.name]}

    def set(self, value: float) -> MoveStatus:
        """Move this axis to ``value`` (region metres). Axis moves on one array take turns
        (bluesky sets both axes in one step of a grid scan), so the returned status may first
        wait for another axis's move; each is checked from where the antennas then stand."""
        target = float(value)
        self._setpoint = target

        def body() -> None:
            with self.array.axis_lock:
                here = list(self.array.positions()[self.stage_name])
                here[self.axis] = target
                self.array.goto({self.stage_name: (here[0], here[1])}, self.speed_m_s)

        status, _ = run_in_thread(f"{self.name}: set {target:.6g} m", body)
        return status

    def _readback(self) -> float:
        return self.array.to_region(self.stage_name, self.stage.position())[self.axis]

    def locate(self) -> dict[str, float]:
        readback = self._readback()
        return {"setpoint": readback if self._setpoint is None else self._setpoint, "readback": readback}

    def read(self) -> dict[str, dict[str, float]]:
        return {self.name: {"value": self._readback(), "timestamp": time.time()}}

    def describe(self) -> dict[str, dict[str, object]]:
        source = f"stage:{self.stage_name}:{'xy'[self.axis]}"
        return {self.name: {"source": source, "dtype": "number", "shape": [], "units": "m", "precision": 6}}

    def stop(self, *, success: bool = True) -> None:
        self.stage.stop()


__all__ = ["StageAxis"]
