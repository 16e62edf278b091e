"""The geometry behind the stage array's gate: distances between points, segments and boxes,
and the one-antenna-at-a-time router (``route_legs``) for moves no straight order makes safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

XY = tuple[float, float]
TOL_M = 1e-9


def point_segment_distance(p: XY, a: XY, b: XY) -> float:
    """Distance from point ``p`` to the segment ``a``-``b``."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((p[0] - ax) * dx + (p[1] - ay) * dy) / length2))
    return math.hypot(p[0] - (ax + t * dx), p[1] - (ay + t * dy))


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


def box_gap(a: tuple[XY, XY], b: tuple[XY, XY]) -> float:
    """The distance between two axis-aligned boxes ((x_lo, y_lo), (x_hi, y_hi)); 0 where they meet."""
    dx = max(0.0, b[0][0] - a[1][0], a[0][0] - b[1][0])
    dy = max(0.0, b[0][1] - a[1][1], a[0][1] - b[1][1])
    return math.hypot(dx, dy)


__all__ = ["TOL_M", "XY", "box_gap", "point_segment_distance", "route_legs", "segment_distance"]
