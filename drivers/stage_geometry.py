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


Box = tuple[XY, XY]  # ((x_lo, y_lo), (x_hi, y_hi)), region metres


def _clear_leg(a: XY, b: XY, others: Mapping[str, XY], need: Mapping[str, float]) -> bool:
    return all(point_segment_distance(p, a, b) + TOL_M >= need[m] for m, p in others.items())


def grid_path(
    a: XY, b: XY, others: Mapping[str, XY], need: Mapping[str, float], box: Box, step_m: float
) -> list[XY] | None:
    """A path from ``a`` to ``b`` inside ``box`` whose every leg keeps ``need[m]`` from each point
    ``others[m]``: A* over a square grid of ``step_m`` (8 neighbours, plus a straight shot at ``b``
    from any node that sees it), then shortened by skipping every point the path can see past.
    Returns the waypoints after ``a`` (ending with ``b``), or None."""
    import heapq

    if _clear_leg(a, b, others, need):
        return [b]
    (x0, y0), (x1, y1) = box
    nx, ny = int((x1 - x0) / step_m + 1e-9), int((y1 - y0) / step_m + 1e-9)

    def at(i: int, j: int) -> XY:
        return (x0 + i * step_m, y0 + j * step_m)

    def free(p: XY) -> bool:
        return all(math.dist(p, q) + TOL_M >= need[m] for m, q in others.items())

    # the start's own cell corners, whichever a straight leg reaches
    seeds = [
        (i, j)
        for i in (math.floor((a[0] - x0) / step_m), math.ceil((a[0] - x0) / step_m))
        for j in (math.floor((a[1] - y0) / step_m), math.ceil((a[1] - y0) / step_m))
        if 0 <= i <= nx and 0 <= j <= ny and free(at(i, j)) and _clear_leg(a, at(i, j), others, need)
    ]
    frontier: list[tuple[float, float, tuple[int, int]]] = []
    came: dict[tuple[int, int], tuple[int, int] | None] = {}
    cost: dict[tuple[int, int], float] = {}
    for node in set(seeds):
        g = math.dist(a, at(*node))
        cost[node], came[node] = g, None
        heapq.heappush(frontier, (g + math.dist(at(*node), b), g, node))
    end: tuple[int, int] | None = None
    while frontier:
        _, g, node = heapq.heappop(frontier)
        if g > cost.get(node, math.inf) + 1e-12:
            continue
        p = at(*node)
        if _clear_leg(p, b, others, need):
            end = node
            break
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                nxt = (node[0] + di, node[1] + dj)
                if (di, dj) == (0, 0) or not (0 <= nxt[0] <= nx and 0 <= nxt[1] <= ny):
                    continue
                q = at(*nxt)
                g2 = g + math.dist(p, q)
                if g2 < cost.get(nxt, math.inf) and free(q) and _clear_leg(p, q, others, need):
                    cost[nxt], came[nxt] = g2, node
                    heapq.heappush(frontier, (g2 + math.dist(q, b), g2, nxt))
    if end is None:
        return None
    nodes: list[XY] = [b]
    cur: tuple[int, int] | None = end
    while cur is not None:
        nodes.append(at(*cur))
        cur = came[cur]
    points = [a, *reversed(nodes)]
    # string pulling: from each kept point, jump to the farthest one a straight leg reaches
    out: list[XY] = []
    k = 0
    while k < len(points) - 1:
        far = next(j for j in range(len(points) - 1, k, -1) if _clear_leg(points[k], points[j], others, need))
        out.append(points[far])
        k = far
    return out


def route_moves(
    start: Mapping[str, XY],
    goal: Mapping[str, XY],
    clearance_m: float,
    boxes: Mapping[str, Box],
    step_m: float | None = None,
    max_parks: int = 2,
) -> list[tuple[str, XY]] | None:
    """Moves of one antenna at a time, each along a grid path around the standing ones
    (``grid_path``, inside the antenna's travel ``boxes``), that bring every antenna to its goal;
    where no order does, an antenna may first step aside to a parking spot (at most
    ``max_parks`` times). Each leg keeps ``clearance_m`` (or, for a pair that is closer already,
    that distance) from every standing antenna. None if nothing is found."""
    step = step_m or clearance_m / 2.0

    def needs(name: str, where: Mapping[str, XY]) -> dict[str, float]:
        return {m: min(clearance_m, math.dist(p, where[name])) for m, p in where.items() if m != name}

    def legs_to(name: str, target: XY, where: dict[str, XY]) -> list[tuple[str, XY]] | None:
        others = {m: p for m, p in where.items() if m != name}
        path = grid_path(where[name], target, others, needs(name, where), boxes[name], step)
        return None if path is None else [(name, p) for p in path]

    def parking(name: str, where: dict[str, XY]) -> list[XY]:
        """Spots in ``name``'s travel, clear of every antenna and every goal, nearest first."""
        (x0, y0), (x1, y1) = boxes[name]
        spots = []
        for i in range(int((x1 - x0) / step + 1e-9) + 1):
            for j in range(int((y1 - y0) / step + 1e-9) + 1):
                p = (x0 + i * step, y0 + j * step)
                fixed = [q for m, q in where.items() if m != name] + [g for m, g in goal.items() if m != name]
                if all(math.dist(p, q) >= 1.5 * clearance_m for q in fixed):
                    spots.append(p)
        spots.sort(key=lambda p: math.dist(p, where[name]))
        return spots[:6]

    def search(where: dict[str, XY], parks: int, depth: int) -> list[tuple[str, XY]] | None:
        todo = [n for n in goal if math.dist(where[n], goal[n]) > 1e-6]
        if not todo:
            return []
        if depth > 2 * len(goal) + max_parks:
            return None
        for name in todo:
            legs = legs_to(name, goal[name], where)
            if legs is not None:
                rest = search({**where, name: goal[name]}, parks, depth + 1)
                if rest is not None:
                    return legs + rest
        if parks <= 0:
            return None
        for name in sorted(where):
            for spot in parking(name, where):
                legs = legs_to(name, spot, where)
                if legs is None:
                    continue
                rest = search({**where, name: spot}, parks - 1, depth + 1)
                if rest is not None:
                    return legs + rest
        return None

    return search(dict(start), max_parks, 0)


__all__ = [
    "TOL_M",
    "XY",
    "box_gap",
    "grid_path",
    "point_segment_distance",
    "route_legs",
    "route_moves",
    "segment_distance",
]
