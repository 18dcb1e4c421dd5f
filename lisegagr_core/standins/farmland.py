"""Synthetic farmland scenes with known field instances, for the demo and the tests.

A scene imitates a NAIP aerial photo of Midwest farmland at about 1 m per pixel: straight
county roads with grass verges cut the land into blocks, the blocks are split by straight
(slightly skewed) lines into fields, one cell becomes a woodlot and a farmstead sits by a road.
Each field has its own crop colour (greens, soil browns, stubble yellows, sampled from NAIP
images), planting rows at the field's own angle, harvest tracks, soil-moisture blotches and
pixel noise, so its 256-bin entropy per channel is about 5–7 bits like real imagery. The
geometry is built with shapely and burnt with rasterio, so the truth is exact: every field is
one connected instance and everything else (roads, verges, woodland, farmstead, the grass
strips between fields) is background.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity
from shapely.geometry import LineString, Polygon
from skimage.measure import label as label_regions

log = logging.getLogger(__name__)

#: Crop looks (name, mean RGB as NAIP shows it, row-texture strength) and how often they occur.
_CROPS: tuple[tuple[str, tuple[float, float, float], float], ...] = (
    ("corn", (64, 86, 62), 1.0),
    ("soybean", (86, 106, 78), 1.0),
    ("pasture", (108, 126, 88), 0.0),
    ("hay", (126, 138, 104), 0.6),
    ("bare soil", (165, 158, 138), 0.7),
    ("pale soil", (178, 174, 152), 0.5),
    ("grey soil", (140, 138, 117), 0.7),
    ("stubble", (176, 166, 114), 0.8),
    ("ripe wheat", (186, 172, 100), 0.6),
)
_CROP_WEIGHTS = np.array([0.17, 0.17, 0.08, 0.08, 0.14, 0.08, 0.1, 0.1, 0.08])

#: Scenes smaller than this (px, about metres) get no farmstead.
_FARMSTEAD_MIN_SCENE = 160

_GRASS_RGB = (100, 118, 82)
_WOODLAND_RGB = (42, 60, 40)
_LAWN_RGB = (92, 122, 78)
_GRAVEL_RGB = (182, 178, 164)
_ROAD_RGBS = ((150, 150, 146), (172, 168, 156))
_ROOF_RGBS = ((218, 219, 214), (192, 195, 196), (118, 116, 114), (148, 84, 68), (170, 172, 168))


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A synthetic farmland photo and its exact field instances.

    rgb: (H, W, 3) uint8; instances: (H, W) uint32, field ids 1..N and 0 elsewhere;
    field_ids: the ids present, ascending; non_field: (H, W) bool, the pixels of roads, verges,
    woodland, farmstead and the grass strips between fields (exactly `instances == 0`).
    """

    rgb: NDArray[np.uint8]
    instances: NDArray[np.uint32]
    field_ids: tuple[int, ...]
    non_field: NDArray[np.bool_]


def make_farmland_scene(
    size: int = 512, *, seed: int = 0, n_fields: int | None = None
) -> SyntheticScene:
    """A size × size synthetic NAIP-like farmland scene at about 1 m per pixel.

    n_fields: the exact number of field instances (None: about one per 160 × 160 px). The
    same seed gives the same scene.
    """
    if size < 64:
        raise ValueError(f"size must be at least 64 px, got {size}")
    if n_fields is None:
        n_fields = max(4, round((size / 160) ** 2))
    if n_fields < 1:
        raise ValueError(f"n_fields must be at least 1, got {n_fields}")
    rng = np.random.default_rng(seed)
    image = shapely.box(0, 0, size, size)
    min_width = max(10.0, 0.05 * size)

    roads = _make_roads(rng, size, 0 if n_fields == 1 else 1 if n_fields < 4 else 2)
    road_surface = shapely.union_all([road for road, _ in roads]) if roads else Polygon()
    verges = shapely.union_all([verge for _, verge in roads]) if roads else Polygon()
    farmstead = _make_farmstead_site(rng, size, roads)
    # Fields run on past the image edge, so no grass strip frames the scene.
    bleed = min(8.0, min_width / 4)
    land = (
        image.buffer(bleed, join_style="mitre")
        .difference(verges)
        .difference(farmstead.buffer(2.0, join_style="mitre"))
        .buffer(-min_width / 4, join_style="mitre")
        .buffer(min_width / 4, join_style="mitre")
    )
    cells = _split_into_cells(rng, list(shapely.get_parts(land)), n_fields + 1, min_width)
    woodland_cell = cells.pop(int(rng.integers(len(cells))))
    cells.sort(key=lambda cell: (round(cell.centroid.y / min_width), cell.centroid.x))
    fields = [_shrink_for_margin(rng, cell) for cell in cells]

    shape = (size, size)
    instances = np.zeros(shape, dtype=np.uint32)
    if fields:
        instances = _largest_pieces(
            rasterize(
                [(field, field_id) for field_id, field in enumerate(fields, start=1)],
                out_shape=shape,
                fill=0,
                dtype="uint32",
            ).astype(np.uint32, copy=False)
        )

    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    canvas = _textured(rng, shape, _GRASS_RGB, noise=5.0, blotch=8.0, blotch_scale=30.0)
    _paint_woodland(rng, canvas, _burn(woodland_cell, shape))
    field_slices = ndimage.find_objects(instances)
    for field_id, (field, window) in enumerate(zip(fields, field_slices, strict=True), start=1):
        if window is None:
            continue
        mask = instances[window] == field_id
        colour = _field_texture(rng, field, rows[window], cols[window])
        canvas[window][mask] = colour[mask]
    _paint_roads(rng, canvas, road_surface, verges, shape)
    _paint_farmstead(rng, canvas, farmstead, roads, shape)

    canvas = np.asarray(cv2.GaussianBlur(canvas, (0, 0), 0.6), dtype=np.float32)
    canvas += rng.normal(0.0, 1.5, canvas.shape).astype(np.float32)
    rgb = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    field_ids = tuple(int(i) for i in np.unique(instances) if i)
    log.debug("synthetic scene: %d px, seed %d, %d fields", size, seed, len(field_ids))
    return SyntheticScene(
        rgb=rgb, instances=instances, field_ids=field_ids, non_field=instances == 0
    )


def write_georeferenced_scene(
    path: str | Path,
    scene: SyntheticScene,
    *,
    crs: str = "EPSG:32615",
    origin: tuple[float, float] = (500000.0, 4500000.0),
    pixel_size: float = 1.0,
) -> None:
    """Write the scene's RGB as a 3-band uint8 GeoTIFF; origin is the top-left corner (x, y)."""
    height, width = scene.instances.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1]),
        "photometric": "RGB",
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(scene.rgb, -1, 0))


def _make_roads(rng: np.random.Generator, size: int, count: int) -> list[tuple[Polygon, Polygon]]:
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


def _make_farmstead_site(
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
    angle = _long_axis_angle(road.minimum_rotated_rectangle)
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


def _split_into_cells(
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
    angle = _long_axis_angle(cell.minimum_rotated_rectangle)
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


def _shrink_for_margin(rng: np.random.Generator, cell: Polygon) -> Polygon:
    """The field inside a cell: shrunk by a grass strip of 0.5–3 px (wider where fences run)."""
    margin = rng.choice([0.6, 1.2, 2.0, 3.0], p=[0.35, 0.3, 0.2, 0.15])
    field = cell.buffer(-margin, join_style="mitre")
    return field if isinstance(field, Polygon) and not field.is_empty else cell


def _field_texture(
    rng: np.random.Generator, field: Polygon, rows: NDArray[np.float32], cols: NDArray[np.float32]
) -> NDArray[np.float32]:
    """(h, w, 3) float32 colours of one field over a window: crop, rows, tracks, blotches."""
    _, base_rgb, row_strength = _CROPS[int(rng.choice(len(_CROPS), p=_CROP_WEIGHTS))]
    base = np.asarray(base_rgb, dtype=np.float32) + rng.normal(0.0, 6.0, 3).astype(np.float32)
    heading = np.deg2rad(_long_axis_angle(field.minimum_rotated_rectangle))
    if rng.random() < 0.25:
        heading += np.pi / 2
    along_rows = cols * np.float32(np.sin(heading)) - rows * np.float32(np.cos(heading))
    shape = rows.shape
    luminance = (
        row_strength
        * rng.uniform(3.0, 7.0)
        * np.sin(2 * np.pi * along_rows / rng.uniform(2.6, 5.0) + rng.uniform(0, 2 * np.pi))
        + row_strength
        * rng.uniform(2.0, 5.0)
        * np.sin(2 * np.pi * along_rows / rng.uniform(9.0, 24.0) + rng.uniform(0, 2 * np.pi))
        + rng.uniform(4.0, 10.0) * _smooth_noise(rng, shape, rng.uniform(25.0, 70.0))
        + rng.uniform(2.0, 5.0) * _smooth_noise(rng, shape, 4.0)
    ).astype(np.float32)
    tint = rng.uniform(1.0, 3.0) * _smooth_noise(rng, shape, 40.0)
    colour = base + luminance[..., None] * np.array([1.0, 0.95, 0.9], dtype=np.float32)
    colour[..., 1] += tint
    colour += rng.normal(0.0, rng.uniform(2.5, 4.0), (*shape, 3)).astype(np.float32)
    if base[0] > 120 and rng.random() < 0.3:
        _paint_waterway(rng, colour)
    return colour


def _paint_waterway(rng: np.random.Generator, colour: NDArray[np.float32]) -> None:
    """A grassed waterway: a meandering green band through a bare field (still the field)."""
    height, width = colour.shape[:2]
    t = np.linspace(0.0, 1.0, 64)
    wander = sum(
        rng.uniform(0.02, 0.06) / harmonic * np.sin(2 * np.pi * harmonic * t + rng.uniform(0, 6.3))
        for harmonic in (1, 2, 3)
    )
    start, end = rng.uniform(0.2, 0.8, 2)
    across = start + (end - start) * t + wander
    if rng.random() < 0.5:
        points = np.stack([across * width, t * height], axis=1)
    else:
        points = np.stack([t * width, across * height], axis=1)
    band = np.zeros((height, width), dtype=np.uint8)
    thickness = int(rng.integers(3, 8))
    cv2.polylines(band, [np.rint(points).astype(np.int32)], False, 1, thickness, cv2.LINE_AA)
    grass = np.asarray(_GRASS_RGB, dtype=np.float32) + rng.normal(0.0, 4.0, (height, width, 3))
    weight = cv2.GaussianBlur(band.astype(np.float32), (0, 0), 1.0)[..., None]
    colour[:] = colour * (1 - weight) + grass.astype(np.float32) * weight


def _paint_woodland(
    rng: np.random.Generator, canvas: NDArray[np.float32], cell: NDArray[np.bool_]
) -> None:
    """Fill most of a cell with dark, blobby tree crowns and their shadows."""
    shape = cell.shape
    extent = ndimage.distance_transform_edt(cell)
    blob = cell & (_smooth_noise(rng, shape, 18.0) * 4.0 + np.minimum(extent, 14.0) > 5.0)
    crowns = _smooth_noise(rng, shape, 3.0)
    shade = np.clip(crowns * 14.0, -22.0, 18.0) + 6.0 * _smooth_noise(rng, shape, 25.0)
    trees = np.asarray(_WOODLAND_RGB, dtype=np.float32) + shade[..., None] * np.array(
        [0.8, 1.0, 0.7], dtype=np.float32
    )
    trees += rng.normal(0.0, 3.0, (*shape, 3)).astype(np.float32)
    canvas[blob] = trees[blob]


def _paint_roads(
    rng: np.random.Generator,
    canvas: NDArray[np.float32],
    surface: Polygon,
    verges: Polygon,
    shape: tuple[int, int],
) -> None:
    """Grass verges with a darker ditch line, then the grey road surface."""
    if surface.is_empty:
        return
    verge_mask = _burn(verges, shape)
    ditch_mask = verge_mask & ~_burn(verges.buffer(-1.5), shape)
    verge = _textured(rng, shape, (112, 128, 92), noise=4.0, blotch=5.0, blotch_scale=10.0)
    canvas[verge_mask] = verge[verge_mask]
    canvas[ditch_mask] = canvas[ditch_mask] * 0.85
    road_rgb = _ROAD_RGBS[int(rng.integers(len(_ROAD_RGBS)))]
    road = _textured(rng, shape, road_rgb, noise=3.0, blotch=4.0, blotch_scale=20.0)
    road_mask = _burn(surface, shape)
    canvas[road_mask] = road[road_mask]


def _paint_farmstead(
    rng: np.random.Generator,
    canvas: NDArray[np.float32],
    site: Polygon,
    roads: list[tuple[Polygon, Polygon]],
    shape: tuple[int, int],
) -> None:
    """A mown lawn, a gravel yard and drive, bright roofs with shadows, and a few trees."""
    if site.is_empty:
        return
    site_mask = _burn(site, shape)
    lawn = _textured(rng, shape, _LAWN_RGB, noise=4.0, blotch=6.0, blotch_scale=8.0)
    canvas[site_mask] = lawn[site_mask]
    angle = _long_axis_angle(roads[0][0].minimum_rotated_rectangle) if roads else 0.0
    centre = np.asarray(site.centroid.coords[0])
    side = np.sqrt(site.area)
    yard = affinity.rotate(
        shapely.box(*(centre - side * 0.28), *(centre + side * 0.28)), angle, origin=tuple(centre)
    )
    gravel = _textured(rng, shape, _GRAVEL_RGB, noise=5.0, blotch=5.0, blotch_scale=6.0)
    if roads:
        road, verges = roads[0]
        nearest = shapely.get_coordinates(shapely.shortest_line(road, shapely.Point(centre)))[0]
        drive = LineString([nearest, centre]).buffer(2.5)
        drive_mask = _burn(drive, shape) & (site_mask | _burn(verges.difference(road), shape))
        canvas[drive_mask] = gravel[drive_mask]
    yard_mask = _burn(yard, shape) & site_mask
    canvas[yard_mask] = gravel[yard_mask]
    buildings: list[Polygon] = []
    wanted = int(rng.integers(3, 6))
    for _ in range(40):
        if len(buildings) == wanted:
            break
        length, width = rng.uniform(9.0, 0.35 * side), rng.uniform(7.0, 13.0)
        offset = rng.uniform(-0.3, 0.3, 2) * side
        building = affinity.rotate(
            shapely.box(-length / 2, -width / 2, length / 2, width / 2),
            angle + rng.choice([0.0, 90.0]),
            origin=(0, 0),
        )
        building = affinity.translate(building, *(centre + offset))
        if site.buffer(-3.0).contains(building) and not any(
            building.buffer(3.0).intersects(other) for other in buildings
        ):
            buildings.append(building)
    for building in buildings:
        shadow = _burn(affinity.translate(building, -2.5, -2.5), shape) & site_mask
        canvas[shadow] *= 0.55
    roof_noise = rng.normal(0.0, 2.5, (*shape, 3)).astype(np.float32)
    for building in buildings:
        roof_rgb = np.asarray(_ROOF_RGBS[int(rng.integers(len(_ROOF_RGBS)))], dtype=np.float32)
        roof_mask = _burn(building, shape)
        canvas[roof_mask] = roof_rgb + roof_noise[roof_mask]
    crowns = np.zeros(shape, dtype=np.uint8)
    for _ in range(int(rng.integers(6, 14))):
        spot = centre + rng.uniform(-0.45, 0.45, 2) * side
        radius = int(rng.integers(3, 7))
        if not any(building.buffer(radius).contains(shapely.Point(spot)) for building in buildings):
            cv2.circle(crowns, tuple(int(v) for v in np.rint(spot)), radius, 1, -1, cv2.LINE_AA)
    crown_mask = crowns.astype(bool)
    canvas[np.roll(crown_mask, (-2, -2), axis=(0, 1)) & ~crown_mask] *= 0.6
    trees = _textured(rng, shape, _WOODLAND_RGB, noise=6.0, blotch=8.0, blotch_scale=3.0)
    canvas[crown_mask] = trees[crown_mask]


def _largest_pieces(instances: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """instances: (H, W) uint32 with each id cut down to its largest 4-connected piece."""
    pieces = label_regions(instances, background=0, connectivity=1)
    piece_ids = ndimage.maximum(instances, pieces, np.arange(1, pieces.max() + 1))
    piece_sizes = np.bincount(pieces.ravel())[1:]
    keep = np.zeros(len(piece_sizes) + 1, dtype=bool)
    for instance_id in np.unique(piece_ids):
        candidates = np.flatnonzero(piece_ids == instance_id)
        keep[candidates[np.argmax(piece_sizes[candidates])] + 1] = True
    return np.where(keep[pieces], instances, 0).astype(np.uint32)


def _textured(
    rng: np.random.Generator,
    shape: tuple[int, int],
    rgb: tuple[float, float, float],
    *,
    noise: float,
    blotch: float,
    blotch_scale: float,
) -> NDArray[np.float32]:
    """(H, W, 3) float32: a colour with blotches of `blotch_scale` px and pixel noise."""
    luminance = blotch * _smooth_noise(rng, shape, blotch_scale)
    texture = np.asarray(rgb, dtype=np.float32) + luminance[..., None]
    texture += rng.normal(0.0, noise, (*shape, 3)).astype(np.float32)
    return texture


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], scale: float
) -> NDArray[np.float32]:
    """(H, W) float32 noise with unit spread and features about `scale` px across."""
    height, width = shape[:2]
    coarse = rng.normal(0.0, 1.0, (int(height / scale) + 3, int(width / scale) + 3))
    fine = cv2.resize(
        coarse.astype(np.float32),
        (int(np.ceil(coarse.shape[1] * scale)), int(np.ceil(coarse.shape[0] * scale))),
        interpolation=cv2.INTER_CUBIC,
    )[:height, :width]
    return (fine - fine.mean()) / max(float(fine.std()), 1e-6)


def _burn(geometry: Polygon, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """(H, W) bool mask of the pixels whose centres lie in a geometry (pixel coordinates)."""
    if geometry.is_empty:
        return np.zeros(shape, dtype=bool)
    return rasterize([(geometry, 1)], out_shape=shape, fill=0, dtype="uint8").astype(bool)


def _long_axis_angle(rectangle: Polygon) -> float:
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
