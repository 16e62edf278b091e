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
ones (``route_legs``), then along grid paths around them, with an antenna stepping aside first
where no order works (``route_moves``), every leg checked by the same rules; the lab's arrays use it, so the
campaign raster, ``testbed run`` and ``testbed stage move`` share one gate and one router (``drivers.stage_axis.StageAxis`` gives
bluesky the same gate). Homing passes it too (``homing_order``).

Pairs already closer than ``D`` (e.g. a bad start) may move only in ways that do not bring them
closer than they already are.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence

from drivers.errors import StageError, StageLimitError, StageNotHomed
from drivers.positioner import MoveStatus, Positioner, wait_all
from drivers.stage_geometry import (
    TOL_M,
    XY,
    box_gap,
    point_segment_distance,
    route_legs,
    route_moves,
    segment_distance,
)

log = logging.getLogger(__name__)


class NoSafeOrder(StageLimitError):
    """No order of straight moves keeps the clearance (a detour may still exist)."""


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
        self.before_close: list[Callable[[], None]] = []  # run while the stages are still open

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
        self,
        positions: Mapping[str, XY] | Sequence[XY],
        speed_m_s: float | None = None,
        *,
        start: Mapping[str, XY] | None = None,
    ) -> list[list[tuple[str, XY]]]:
        """Check a move of the array and split it into safe batches; raise ``StageLimitError``.

        Returns the batches: each a list of (stage name, region target), run one after another.
        No motion command is sent (positions may be read if not known yet). ``start``: where the
        antennas will stand (e.g. at their origins once homed) instead of where they are, so a
        move can be checked before the homing it needs.
        """
        targets = self._targets(positions)
        for n, xy in targets.items():  # travel and speed, per stage
            stage = self.stages[n]
            speed = stage.limits.max_speed_m_s if speed_m_s is None else speed_m_s
            stage.limits.check_move(self.to_stage(n, xy), speed, f"{n} (region target {xy})")
        start = self._current() if start is None else dict(start)
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
        self,
        positions: Mapping[str, XY] | Sequence[XY],
        speed_m_s: float | None = None,
        *,
        start: Mapping[str, XY] | None = None,
    ) -> list[list[tuple[str, XY]]]:
        """``plan``, or where no order of straight moves is safe, one antenna at a time along
        straight or L-shaped legs (``route_legs``), each leg checked as a move of its own."""
        try:
            return self.plan(positions, speed_m_s, start=start)
        except NoSafeOrder as exc:
            blocked = exc
        here = self._current() if start is None else dict(start)
        goal = {**here, **self._targets(positions)}
        legs = route_legs(here, goal, self.min_spacing_m)
        if legs is None:
            # around the others on a grid of D/2, stepping one aside first where no order works
            boxes = {}
            for n, stage in self.stages.items():
                (ox, oy), (tx, ty) = self.origins_m[n], stage.limits.travel_m
                boxes[n] = ((ox, oy), (ox + tx, oy + ty))
            legs = route_moves(here, goal, self.min_spacing_m, boxes)
        if legs is None:
            raise NoSafeOrder(
                f"{blocked}; no one-at-a-time route around the others (with up to two antennas stepping "
                "aside) avoids it either"
            ) from None
        log.info("no straight move order keeps the clearance (%s); routing one antenna at a time", blocked)
        # Re-check every leg from where the antennas will then stand (travel, speed, spacing).
        where = dict(here)
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

    def _homing_box(self, name: str) -> tuple[XY, XY]:
        """The region box a homing of ``name`` sweeps: from where it is to its origin corner (GRBL
        and Zaber home towards the switches along both axes), or its whole travel square while its
        position is unknown (the carriage may be anywhere in it)."""
        ox, oy = self.origins_m[name]
        here = self._known.get(name)
        if here is None:
            try:
                here = self.to_region(name, self.stages[name].position())
            except StageError:
                tx, ty = self.stages[name].limits.travel_m
                return (ox, oy), (ox + tx, oy + ty)
        return (min(ox, here[0]), min(oy, here[1])), (max(ox, here[0]), max(oy, here[1]))

    def homing_order(self, names: Sequence[str] | None = None) -> list[list[str]]:
        """Batches of stages to home, one batch after another, such that every homing path keeps
        the clearance ``D`` from every antenna whose position is known then (those standing, and
        those homed before it, at their origins); raise ``StageLimitError`` if no order does.

        A stage whose position is unknown sweeps its whole travel square, so it homes alone; the
        antennas whose positions are unknown cannot be checked (they are logged). Pairs whose
        origins are closer than ``D`` only keep that origin distance (as in ``plan``).
        """
        todo = list(self.names if names is None else names)
        unknown = [n for n in todo if n not in self._known]
        boxes = {n: self._homing_box(n) for n in todo}
        standing: dict[str, XY] = {}
        for n in self.names:
            if n in todo:
                continue
            try:
                standing[n] = self._known.get(n) or self.to_region(n, self.stages[n].position())
            except StageError:
                log.warning("homing: %s's position is unknown; no homing path can be checked against it", n)

        def need(a: str, b: str) -> float:
            return min(self.min_spacing_m, math.dist(self.origins_m[a], self.origins_m[b]))

        def gap(name: str, where: dict[str, XY]) -> tuple[float, str, float] | None:
            """The worst clearance shortfall of ``name``'s homing box against ``where``."""
            lo, hi = boxes[name]
            worst = None
            for m, p in where.items():
                d = math.hypot(max(lo[0] - p[0], 0.0, p[0] - hi[0]), max(lo[1] - p[1], 0.0, p[1] - hi[1]))
                if d + TOL_M < need(name, m) and (worst is None or d < worst[0]):
                    worst = (d, m, need(name, m))
            return worst

        if not unknown and all(gap(n, standing) is None for n in todo):
            # every path is known: those whose boxes keep D from each other home together
            apart = all(
                box_gap(boxes[a], boxes[b]) + TOL_M >= need(a, b)
                for i, a in enumerate(todo) for b in todo[i + 1 :]
            )  # fmt: skip
            if apart:
                return [todo] if todo else []
        blocked: list[tuple[float, str, str, float]] = []

        def search(done: list[str], where: dict[str, XY]) -> list[str] | None:
            left = [n for n in todo if n not in done]
            if not left:
                return []
            for n in left:
                worst = gap(n, where)
                if worst is not None:
                    blocked.append((worst[0], n, worst[1], worst[2]))
                    continue
                rest = search([*done, n], {**where, n: self.origins_m[n]})
                if rest is not None:
                    return [n, *rest]
            return None

        order = search([], dict(standing))
        if order is None:
            d, n, m, c = min(blocked)
            (x0, y0), (x1, y1) = boxes[n]
            raise StageLimitError(
                f"homing: no order keeps the clearance: {n}'s way home (within x {x0:.4g}..{x1:.4g} m, "
                f"y {y0:.4g}..{y1:.4g} m) passes {d * 1e3:.2f} mm from {m}; the clearance is {c * 1e3:.2f} mm; "
                "move the antennas apart (or place them by hand) first; nothing was sent"
            )
        return [[n] for n in order]

    def home_all(self, names: Sequence[str] | None = None) -> list[MoveStatus]:
        """Home every stage (or ``names``), each to its own origin corner, through the gate: in
        the batches of ``homing_order`` (checked before anything moves), one after another.
        One status per homed stage, in the order of ``names``."""
        chosen = list(self.names if names is None else names)
        batches = self.homing_order(chosen)
        for i, a in enumerate(chosen):
            for b in chosen[i + 1 :]:
                if math.dist(self.origins_m[a], self.origins_m[b]) < self.min_spacing_m:
                    log.warning("stage origins of %s and %s are closer than the minimum spacing", a, b)
        if len(batches) > 1:
            log.info("homing one at a time, in this order: %s", ", ".join(n for b in batches for n in b))
        for n in chosen:
            self._known.pop(n, None)
        statuses = {n: MoveStatus(f"{n}: home") for n in chosen}

        def start(batch: list[str]) -> list[MoveStatus]:
            started = []
            for n in batch:
                inner = self.stages[n].home()

                def done(st: MoveStatus, n: str = n) -> None:
                    if st.success:
                        self._known[n] = self.origins_m[n]
                        statuses[n].set_finished()
                    else:
                        statuses[n].set_exception(st.exception() or StageError(f"{n}: homing failed"))

                inner.add_callback(done)
                started.append(inner)
            return started

        if not batches:
            return []
        first = start(batches[0])

        def rest() -> None:
            running = first
            for index in range(1, len(batches)):
                try:
                    wait_all(running, self.move_timeout_s or 3600.0)
                    if self._stop.is_set():
                        raise StageError("stop_all() was called before this stage's turn")
                except StageError as exc:
                    for later in batches[index:]:
                        for n in later:
                            statuses[n].set_exception(
                                StageError(f"{n}: not homed: an earlier homing failed ({exc})")
                            )
                    return
                running = start(batches[index])

        if len(batches) > 1:
            self._stop.clear()
            threading.Thread(target=rest, daemon=True, name="stage-array-homing").start()
        return [statuses[n] for n in chosen]

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
        """Run ``before_close`` hooks, close every stage's port, then run ``on_close`` hooks. Safe
        to call twice."""
        early, self.before_close = self.before_close, []
        for hook in early:
            try:
                hook()
            except StageError as exc:
                log.warning("before closing the stages: %s", exc)
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


__all__ = [
    "NoSafeOrder",
    "StageArray",
    "point_segment_distance",
    "route_legs",
    "segment_distance",
]
