"""Several XY stages that carry the N receive antennas, driven in region coordinates.

Each stage has an origin: the region coordinates of its homed corner, so ``region = origin +
stage``. ``move_all`` checks every safety rule *before any motion command is sent*:

- travel: each target lies within its stage's travel (``StageLimits.check_move``);
- speed: the requested speed is within each stage's ``max_speed_m_s``;
- spacing: the targets keep the minimum antenna spacing ``D``, and so does the whole straight-line
  path of a simultaneous move. Timing is not trusted: two moving antennas are kept at least ``D``
  apart over *every* pair of points of their two segments (a conservative test that holds however
  the stages' speeds differ), and a moving antenna keeps ``D`` from each standing one.

If all moves cannot run at once, ``policy="sequence"`` (default) splits them into batches that
run one after another, each batch safe by the same test; ``policy="refuse"`` raises instead.
A move that no order makes safe raises ``NoSafeOrder`` (a ``StageLimitError``) naming the two
stages, the distance they would reach and the clearance, and nothing moves. ``policy="route"``
then tries one antenna at a time, each straight or along an L-shaped path around the standing
ones (``route_legs``), every leg checked by the same rules; the lab's arrays use it, so the
campaign raster, ``testbed run`` and ``testbed stage move`` share one gate and one router.

Pairs already closer than ``D`` (e.g. a bad start) may move only in ways that do not bring them
closer than they already are.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from drivers.errors import StageError, StageLimitError, StageNotHomed
from drivers.positioner import MoveStatus, Positioner, run_in_thread, wait_all

log = logging.getLogger(__name__)

XY = tuple[float, float]
TOL_M = 1e-9


def point_segment_distance(p: XY, a: XY, b: XY) -> float:
    """Distance from point ``p`` to the segment ``a``-``b``."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((p[0] - ax) * dx + (p[1] - ay) * dy) / length2))
    return math.hypot(p[0] - (ax + t * dx), p[1] - (ay + t * dy))


class NoSafeOrder(StageLimitError):
    """No order of straight moves keeps the clearance (a detour may still exist)."""


def route_legs(
    start: Mapping[str, XY], goal: Mapping[str, XY], clearance_m: float
) -> list[tuple[str, XY]] | None:
    """Moves of one antenna at a time that keep every other antenna ``clearance_m`` away, or None.

    Depth-first over which antenna goes next and how: straight, or along its L-shaped path
    (x first or y first). The corners lie in the box spanned by start and goal, so inside travel.
    """

    def leg_clear(name: str, a: XY, b: XY, where: dict[str, XY]) -> bool:
        return all(
            point_segment_distance(p, a, b) + TOL_M >= clearance_m for m, p in where.items() if m != name
        )

    def search(where: dict[str, XY], todo: frozenset[str]) -> list[tuple[str, XY]] | None:
        if not todo:
            return []
        for name in sorted(todo):
            a, b = where[name], goal[name]
            for path in ([b], [(b[0], a[1]), b], [(a[0], b[1]), b]):
                points = [a, *path]
                if all(leg_clear(name, points[i], points[i + 1], where) for i in range(len(path))):
                    rest = search({**where, name: b}, todo - {name})
                    if rest is not None:
                        return [(name, xy) for xy in path] + rest
        return None

    moving = frozenset(n for n in goal if math.dist(start[n], goal[n]) > 1e-6)
    return search(dict(start), moving)


def _cross(o: XY, a: XY, b: XY) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def segment_distance(a0: XY, a1: XY, b0: XY, b1: XY) -> float:
    """Smallest distance between any point of segment a and any point of segment b."""
    d1, d2 = _cross(b0, b1, a0), _cross(b0, b1, a1)
    d3, d4 = _cross(a0, a1, b0), _cross(a0, a1, b1)
    if ((d1 > 0) != (d2 > 0)) and ((d3 > 0) != (d4 > 0)) and 0 not in (d1, d2, d3, d4):
        return 0.0  # proper crossing
    return min(
        point_segment_distance(a0, b0, b1),
        point_segment_distance(a1, b0, b1),
        point_segment_distance(b0, a0, a1),
        point_segment_distance(b1, a0, a1),
    )


class StageArray:
    """The N antenna stages, with region-frame moves and the safety rules above."""

    def __init__(
        self,
        stages: Mapping[str, Positioner],
        origins_m: Mapping[str, XY],
        min_spacing_m: float,
        *,
        policy: str = "sequence",
        move_timeout_s: float | None = None,
    ) -> None:
        if policy not in ("sequence", "refuse", "route"):
            raise ValueError(f"policy must be 'sequence', 'refuse' or 'route' (got {policy!r})")
        if not stages:
            raise ValueError("StageArray needs at least one stage")
        missing = [n for n in stages if n not in origins_m]
        if missing:
            raise ValueError(f"no origin given for stage(s) {missing}")
        if not (math.isfinite(min_spacing_m) and min_spacing_m >= 0):
            raise ValueError(f"min_spacing_m must be a finite number >= 0 (got {min_spacing_m!r})")
        self.stages: dict[str, Positioner] = dict(stages)
        self.origins_m: dict[str, XY] = {n: (float(origins_m[n][0]), float(origins_m[n][1])) for n in stages}
        self.min_spacing_m = float(min_spacing_m)
        self.policy = policy
        self.move_timeout_s = move_timeout_s
        self._known: dict[str, XY] = {}  # region positions as of the last move/home/read
        self._lock = threading.Lock()
        self._runner: threading.Thread | None = None
        self._stop = threading.Event()
        self._statuses: dict[str, MoveStatus] = {}
        self._last_leg: dict[str, int] = {}
        self.axis_lock = threading.Lock()  # StageAxis moves on this array take turns
        self.on_close: list[Callable[[], None]] = []  # run after the stages close (e.g. stop emulators)

    @property
    def names(self) -> list[str]:
        return list(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    # --- frames ----------------------------------------------------------------------------------
    def to_stage(self, name: str, xy_region: XY) -> XY:
        ox, oy = self.origins_m[name]
        return (float(xy_region[0]) - ox, float(xy_region[1]) - oy)

    def to_region(self, name: str, xy_stage: XY) -> XY:
        ox, oy = self.origins_m[name]
        return (xy_stage[0] + ox, xy_stage[1] + oy)

    def positions(self, names: Sequence[str] | None = None) -> dict[str, XY]:
        """Read the position of every stage (or of ``names``), in region coordinates."""
        chosen = self.stages if names is None else {n: self.stages[n] for n in names}
        pos = {n: self.to_region(n, s.position()) for n, s in chosen.items()}
        self._known.update(pos)
        return pos

    def _current(self) -> dict[str, XY]:
        unknown = [n for n in self.stages if n not in self._known]
        for n in unknown:
            try:
                self._known[n] = self.to_region(n, self.stages[n].position())
            except StageNotHomed as exc:
                # a position the controller only counts is no ground for a spacing check
                raise StageNotHomed(
                    f"stage array: {n}'s position is unknown, so no move can be checked against the "
                    f"{self.min_spacing_m:g} m spacing; home {n} first ({exc})"
                ) from exc
        return dict(self._known)

    # --- safety --------------------------------------------------------------------------------
    def _targets(self, positions: Mapping[str, XY] | Sequence[XY]) -> dict[str, XY]:
        if isinstance(positions, Mapping):
            unknown = [n for n in positions if n not in self.stages]
            if unknown:
                raise StageLimitError(f"unknown stage name(s) {unknown}; stages are {self.names}")
            items = dict(positions)
        else:
            seq = list(positions)
            if len(seq) != len(self.stages):
                raise StageLimitError(f"got {len(seq)} positions for {len(self.stages)} stages {self.names}")
            items = dict(zip(self.names, seq, strict=True))
        out: dict[str, XY] = {}
        for n, xy in items.items():
            try:
                x, y = (float(v) for v in xy)
            except (TypeError, ValueError):
                raise StageLimitError(f"{n}: target must be an (x, y) pair in metres (got {xy!r})") from None
            out[n] = (x, y)
        return out

    def _clearance(self, a: str, b: str, start: Mapping[str, XY]) -> float:
        """The spacing pair (a, b) must keep: D, or less if they already start closer."""
        return min(self.min_spacing_m, math.dist(start[a], start[b]))

    def plan(
        self, positions: Mapping[str, XY] | Sequence[XY], speed_m_s: float | None = None
    ) -> list[list[tuple[str, XY]]]:
        """Check a move of the array and split it into safe batches; raise ``StageLimitError``.

        Returns the batches: each a list of (stage name, region target), run one after another.
        No motion command is sent (positions may be read if not known yet).
        """
        targets = self._targets(positions)
        for n, xy in targets.items():  # travel and speed, per stage
            stage = self.stages[n]
            speed = stage.limits.max_speed_m_s if speed_m_s is None else speed_m_s
            stage.limits.check_move(self.to_stage(n, xy), speed, f"{n} (region target {xy})")
        start = self._current()
        final = {**start, **targets}
        names = self.names
        d_min = self.min_spacing_m
        for i, a in enumerate(names):  # the targets themselves
            for b in names[i + 1 :]:
                gap = math.dist(final[a], final[b])
                if gap + TOL_M < self._clearance(a, b, start):
                    raise StageLimitError(
                        f"spacing limit: targets put {a} at {final[a]} and {b} at {final[b]}, "
                        f"{gap * 1e3:.2f} mm apart; the minimum spacing is {d_min * 1e3:.2f} mm; nothing was sent"
                    )
        moving = [n for n in names if n in targets and math.dist(targets[n], start[n]) > TOL_M]
        current = dict(start)
        batches: list[list[tuple[str, XY]]] = []
        pending = list(moving)
        while pending:
            batch: list[str] = []
            blocker: tuple[str, str, float, float] | None = None
            for n in pending:
                seg = (current[n], final[n])
                ok = True
                for m in names:
                    if m == n:
                        continue
                    need = self._clearance(n, m, start)
                    if m in batch:
                        gap = segment_distance(seg[0], seg[1], current[m], final[m])
                    else:
                        gap = point_segment_distance(current[m], seg[0], seg[1])
                    if gap + TOL_M < need:
                        ok = False
                        if blocker is None or gap < blocker[2]:
                            blocker = (n, m, gap, need)
                        break
                if ok:
                    batch.append(n)
            if not batch:
                assert blocker is not None
                n, m, gap, need = blocker
                raise NoSafeOrder(
                    f"spacing limit: moving {n} from {current[n]} to {final[n]} would pass {gap * 1e3:.2f} mm "
                    f"from {m} at {current[m]}; the clearance is {need * 1e3:.2f} mm and no order of moves "
                    "avoids it; nothing was sent"
                )
            if self.policy == "refuse" and len(batch) < len(pending):
                n = next(p for p in pending if p not in batch)
                raise StageLimitError(
                    f"spacing limit: {n} cannot move to {final[n]} at the same time as the others without "
                    f"coming closer than {d_min * 1e3:.2f} mm along the way (policy='refuse'); nothing was sent"
                )
            batches.append([(n, final[n]) for n in batch])
            for n in batch:
                current[n] = final[n]
            pending = [n for n in pending if n not in batch]
        return batches

    def route(
        self, positions: Mapping[str, XY] | Sequence[XY], speed_m_s: float | None = None
    ) -> list[list[tuple[str, XY]]]:
        """``plan``, or where no order of straight moves is safe, one antenna at a time along
        straight or L-shaped legs (``route_legs``), each leg checked as a move of its own."""
        try:
            return self.plan(positions, speed_m_s)
        except NoSafeOrder as exc:
            blocked = exc
        goal = {**self._current(), **self._targets(positions)}
        legs = route_legs(self._current(), goal, self.min_spacing_m)
        if legs is None:
            raise NoSafeOrder(f"{blocked}; no one-at-a-time L-shaped detour avoids it either") from None
        log.info("no straight move order keeps the clearance (%s); routing one antenna at a time", blocked)
        # Re-check every leg from where the antennas will then stand (travel, speed, spacing).
        where = self._current()
        for name, xy in legs:
            self._check_leg(name, xy, where, speed_m_s)
            where[name] = xy
        return [[leg] for leg in legs]

    def _check_leg(self, name: str, xy: XY, where: dict[str, XY], speed_m_s: float | None) -> None:
        stage = self.stages[name]
        speed = stage.limits.max_speed_m_s if speed_m_s is None else speed_m_s
        stage.limits.check_move(self.to_stage(name, xy), speed, f"{name} (region waypoint {xy})")
        for m, p in where.items():
            need = min(self.min_spacing_m, math.dist(p, where[name]))
            if m != name and point_segment_distance(p, where[name], xy) + TOL_M < need:
                raise StageLimitError(
                    f"spacing limit: routed leg of {name} to {xy} passes {m}; nothing was sent"
                )

    # --- motion --------------------------------------------------------------------------------
    def move_all(
        self,
        positions: Mapping[str, XY] | Sequence[XY],
        speed_m_s: float | None = None,
        *,
        route: bool | None = None,
    ) -> list[MoveStatus]:
        """Check, then move; one status per stage (in ``names`` order), finished when it arrives.

        ``route`` (default: ``policy == "route"``) allows one-at-a-time detours (``route``).

        Batches (see ``plan``) run one after another on a background thread; a failure in one
        batch stops the remaining ones (their statuses fail with the same error).
        """
        with self._lock:
            busy = sorted(n for n, st in self._statuses.items() if not st.done)
            if busy or (self._runner is not None and self._runner.is_alive()):
                # Where a moving antenna is, is anywhere on its path: plan only from rest.
                raise StageError(
                    f"the stage array is still moving ({', '.join(busy)}); wait or stop_all() first"
                )
            if self.policy == "route" if route is None else route:
                batches = self.route(positions, speed_m_s)
            else:
                batches = self.plan(positions, speed_m_s)
            statuses = {n: MoveStatus(f"{n}: array move") for n in self.names}
            # A routed stage may move in several legs: its status finishes with its last one.
            self._last_leg = {n: i for i, batch in enumerate(batches) for n, _ in batch}
            self._statuses = statuses
            scheduled = {n for batch in batches for n, _ in batch}
            for n in self.names:
                if n not in scheduled:
                    statuses[n].set_finished()  # already there (or not asked to move)
            if not batches:
                return [statuses[n] for n in self.names]
            self._stop.clear()
            first = self._start_batch(0, batches[0], speed_m_s, statuses)
            if len(batches) == 1:
                return [statuses[n] for n in self.names]
            self._runner = threading.Thread(
                target=self._run_batches, args=(first, batches, speed_m_s, statuses), daemon=True,
                name="stage-array-moves",
            )  # fmt: skip
            self._runner.start()
            return [statuses[n] for n in self.names]

    def _start_batch(
        self,
        index: int,
        batch: list[tuple[str, XY]],
        speed_m_s: float | None,
        statuses: dict[str, MoveStatus],
    ) -> list[MoveStatus]:
        started = []
        for n, xy in batch:
            inner = self.stages[n].move_to(self.to_stage(n, xy), speed_m_s)
            outer = statuses[n]
            last = self._last_leg.get(n) == index

            def done(
                st: MoveStatus, n: str = n, xy: XY = xy, outer: MoveStatus = outer, last: bool = last
            ) -> None:
                if st.success:
                    self._known[n] = xy
                    if last:
                        outer.set_finished()
                else:
                    self._known.pop(n, None)
                    outer.set_exception(st.exception() or StageError(f"{n}: move failed"))

            inner.add_callback(done)
            started.append(inner)
        return started

    def _run_batches(
        self,
        running: list[MoveStatus],
        batches: list[list[tuple[str, XY]]],
        speed_m_s: float | None,
        statuses: dict[str, MoveStatus],
    ) -> None:
        timeout = self.move_timeout_s or 3600.0
        for index in range(1, len(batches)):
            try:
                wait_all(running, timeout)
                if self._stop.is_set():
                    raise StageError("stop_all() was called before this stage's turn")
                running = self._start_batch(index, batches[index], speed_m_s, statuses)
            except StageError as exc:
                for later in batches[index:]:
                    for n, _ in later:
                        statuses[n].set_exception(
                            StageError(f"{n}: not moved: an earlier move failed ({exc})")
                        )
                return

    def goto(
        self,
        positions: Mapping[str, XY] | Sequence[XY],
        speed_m_s: float | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, XY]:
        """``move_all`` and wait; return the positions reached (region frame).

        The default timeout allows each batch twice the time of a full-diagonal move, plus 30 s.
        """
        statuses = self.move_all(positions, speed_m_s)
        if timeout_s is None:
            longest = max(
                s.limits.move_time_s(math.hypot(*s.limits.travel_m), speed_m_s) for s in self.stages.values()
            )
            timeout_s = 2.0 * longest * len(self.stages) + 30.0
        wait_all(statuses, timeout_s)
        return self.positions()

    def home_all(self) -> list[MoveStatus]:
        """Home every stage at once (each goes to its own origin corner)."""
        origins = list(self.origins_m.values())
        for i, a in enumerate(origins):
            for b in origins[i + 1 :]:
                if math.dist(a, b) < self.min_spacing_m:
                    log.warning("stage origins %s and %s are closer than the minimum spacing", a, b)
        self._known.clear()
        statuses = []
        for n, stage in self.stages.items():
            st = stage.home()
            st.add_callback(
                lambda s, n=n: self._known.__setitem__(n, self.origins_m[n]) if s.success else None
            )
            statuses.append(st)
        return statuses

    def stop_all(self) -> None:
        """Stop every stage now (and any batches still to come)."""
        self._stop.set()
        errors = []
        threads = [
            threading.Thread(target=self._stop_one, args=(n, errors), daemon=True) for n in self.stages
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30.0)
        self._known.clear()
        if errors:
            raise StageError("; ".join(errors))

    def _stop_one(self, name: str, errors: list[str]) -> None:
        try:
            self.stages[name].stop()
        except StageError as exc:
            errors.append(f"{name}: {exc}")

    def close(self) -> None:
        """Close every stage's port, then run ``on_close`` hooks. Safe to call twice."""
        for stage in self.stages.values():
            try:
                stage.close()
            except StageError as exc:
                log.warning("closing %s: %s", stage.name, exc)
        hooks, self.on_close = self.on_close, []
        for hook in hooks:
            hook()

    def __enter__(self) -> StageArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


__all__ = [
    "NoSafeOrder",
    "StageArray",
    "StageAxis",
    "point_segment_distance",
    "route_legs",
    "segment_distance",
]
