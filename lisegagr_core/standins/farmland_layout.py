"""The geometry of a synthetic farmland scene (`farmland`), in pixel coordinates: straight
county roads with their verges, a farmstead's yard beside a road, and the land between cut by
straight, slightly skewed lines into cells (fields and a woodlot). Drawn with shapely from the
scene's random generator.
"""

from __future__ import annotations

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely import affinity
from shapely.geometry import LineString, Polygon

#: Scenes smaller than this (px, about metres) get no farmstead.
_FARMSTEAD_MIN_SCENE = 160


def make_roads(rng: np.random.Generator, size: int, count: int) -> list[tuple[Polygon, Polygon]]:
    """Straight county roads crossing the scene: (surface, surface + verges) polygons."""
    roads = []
    for index in range(count):
        angle = np.deg2rad(rng.uniform(-5.0, 5.0)) + (np.pi / 2 if index == 1 else 0.0)
        offset = rng.uniform(0.3, 0.7) * size
        centre = np.array([offset, size / 2] if index == 0 else [size / 2, offset])
        direction = np.array([np.sin(angle), np.cos(angle)])
        line = LineString([centre - 2 * size * direction, centre + 2 * size * direction])
        width = rng.uniform(5.0, 8.0)
        verge = rng.uniform(3.0, 6.0)
        roads.append(
            (
                line.buffer(width / 2, cap_style="flat"),
                line.buffer(width / 2 + verge, cap_style="flat"),
            )
        )
    return roads


def make_farmstead_site(
    rng: np.random.Generator, size: int, roads: list[tuple[Polygon, Polygon]]
) -> Polygon:
    """A square yard beside the first road, clear of the others (a corner when there is none).

    Empty in scenes under `_FARMSTEAD_MIN_SCENE` px, too small to hold one.
    """
    if size < _FARMSTEAD_MIN_SCENE:
        return Polygon()
    side = rng.uniform(55.0, 85.0)
    image = shapely.box(0, 0, size, size)
    if not roads:
        return shapely.box(size - side, 0.0, size, side)
    road, verges = roads[0]
    angle = long_axis_angle(road.minimum_rotated_rectangle)
    direction = np.array([np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))])
    road_centre = shapely.get_coordinates(road.centroid)[0]
    other_verges = [other for _, other in roads[1:]]
    site = Polygon()
    for _ in range(20):
        local = shapely.box(
            -side / 2, _min_width(verges) / 2, side / 2, _min_width(verges) / 2 + side
        )
        if rng.random() < 0.5:
            local = affinity.scale(local, 1.0, -1.0, origin=(0, 0))
        anchor = road_centre + rng.uniform(-0.3, 0.3) * size * direction
        site = affinity.translate(affinity.rotate(local, angle, origin=(0, 0)), *anchor)
        if not any(site.intersects(other) for other in other_verges):
            break
    for other in other_verges:
        site = site.difference(other)
    clipped = site.intersection(image)
    return clipped if isinstance(clipped, Polygon) and not clipped.is_empty else Polygon()


def split_into_cells(
    rng: np.random.Generator, blocks: list[Polygon], count: int, min_width: float
) -> list[Polygon]:
    """Split blocks by straight, slightly skewed cuts across their long axis into `count` cells."""
    cells = [block for block in blocks if block.area > min_width**2]
    attempts = 0
    while len(cells) < count:
        attempts += 1
        if attempts > 200 * count:
            raise ValueError(f"cannot fit {count - 1} fields of at least {min_width:.0f} px wide")
        areas = np.array([cell.area for cell in cells]) ** 1.5
        index = int(rng.choice(len(cells), p=areas / areas.sum()))
        pieces = _cut(rng, cells[index], min_width)
        if pieces is not None:
            cells[index : index + 1] = pieces
    return cells[:count] if len(cells) > count else cells


def _cut(rng: np.random.Generator, cell: Polygon, min_width: float) -> list[Polygon] | None:
    """Two pieces of a cell cut across its long axis, or None when a piece would be too thin."""
    angle = long_axis_angle(cell.minimum_rotated_rectangle)
    skew = rng.uniform(-12.0, 12.0) if rng.random() < 0.4 else 0.0
    along = np.array([np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))])
    cut_direction = np.deg2rad(angle + 90.0 + skew)
    across = np.array([np.cos(cut_direction), np.sin(cut_direction)])
    extent = np.sqrt(cell.area) * 4 + 4 * min_width
    length = _extent_along(cell, along)
    point = np.asarray(cell.centroid.coords[0]) + rng.uniform(-0.25, 0.25) * length * along
    half_plane = Polygon(
        [
            point - extent * across,
            point + extent * across,
            point + extent * across + extent * along,
            point - extent * across + extent * along,
        ]
    )
    pieces = [cell.intersection(half_plane), cell.difference(half_plane)]
    if not all(isinstance(piece, Polygon) and _min_width(piece) >= min_width for piece in pieces):
        return None
    return [piece for piece in pieces if isinstance(piece, Polygon)]


def shrink_for_margin(rng: np.random.Generator, cell: Polygon) -> Polygon:
    """The field inside a cell: shrunk by a grass strip of 0.5–3 px (wider where fences run)."""
    margin = rng.choice([0.6, 1.2, 2.0, 3.0], p=[0.35, 0.3, 0.2, 0.15])
    field = cell.buffer(-margin, join_style="mitre")
    return field if isinstance(field, Polygon) and not field.is_empty else cell


def long_axis_angle(rectangle: Polygon) -> float:
    """Direction of a (rotated) rectangle's longer side, in degrees from the x axis."""
    corners = shapely.get_coordinates(rectangle)[:3]
    edges = [corners[1] - corners[0], corners[2] - corners[1]]
    longer = max(edges, key=lambda edge: float(np.hypot(*edge)))
    return float(np.degrees(np.arctan2(longer[1], longer[0])))


def _extent_along(polygon: Polygon, direction: NDArray[np.float64]) -> float:
    projections = shapely.get_coordinates(polygon) @ direction
    return float(projections.max() - projections.min())


def _min_width(polygon: Polygon) -> float:
    corners = shapely.get_coordinates(polygon.minimum_rotated_rectangle)[:3]
    return float(min(np.hypot(*(corners[1] - corners[0])), np.hypot(*(corners[2] - corners[1]))))
