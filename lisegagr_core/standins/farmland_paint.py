"""The pixels of a synthetic farmland scene (`farmland`): crop colours sampled from NAIP
images with planting rows, harvest tracks and blotches, woodland crowns, grass verges and
roads, a farmstead's lawn, gravel, roofs and trees, over grass. Geometry is burnt with
rasterio (a pixel is in a shape when its centre is); colours come from the scene's random
generator, in the order the scene paints.
"""

from __future__ import annotations

import cv2
import numpy as np
import shapely
from numpy.typing import NDArray
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity
from shapely.geometry import LineString, Polygon

from lisegagr_core.standins.farmland_layout import long_axis_angle

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
_GRASS_RGB = (100, 118, 82)
_WOODLAND_RGB = (42, 60, 40)
_LAWN_RGB = (92, 122, 78)
_GRAVEL_RGB = (182, 178, 164)
_ROAD_RGBS = ((150, 150, 146), (172, 168, 156))
_ROOF_RGBS = ((218, 219, 214), (192, 195, 196), (118, 116, 114), (148, 84, 68), (170, 172, 168))


def field_texture(
    rng: np.random.Generator, field: Polygon, rows: NDArray[np.float32], cols: NDArray[np.float32]
) -> NDArray[np.float32]:
    """(h, w, 3) float32 colours of one field over a window: crop, rows, tracks, blotches."""
    _, base_rgb, row_strength = _CROPS[int(rng.choice(len(_CROPS), p=_CROP_WEIGHTS))]
    base = np.asarray(base_rgb, dtype=np.float32) + rng.normal(0.0, 6.0, 3).astype(np.float32)
    heading = np.deg2rad(long_axis_angle(field.minimum_rotated_rectangle))
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


def paint_woodland(
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


def paint_roads(
    rng: np.random.Generator,
    canvas: NDArray[np.float32],
    surface: Polygon,
    verges: Polygon,
    shape: tuple[int, int],
) -> None:
    """Grass verges with a darker ditch line, then the grey road surface."""
    if surface.is_empty:
        return
    verge_mask = burn(verges, shape)
    ditch_mask = verge_mask & ~burn(verges.buffer(-1.5), shape)
    verge = textured(rng, shape, (112, 128, 92), noise=4.0, blotch=5.0, blotch_scale=10.0)
    canvas[verge_mask] = verge[verge_mask]
    canvas[ditch_mask] = canvas[ditch_mask] * 0.85
    road_rgb = _ROAD_RGBS[int(rng.integers(len(_ROAD_RGBS)))]
    road = textured(rng, shape, road_rgb, noise=3.0, blotch=4.0, blotch_scale=20.0)
    road_mask = burn(surface, shape)
    canvas[road_mask] = road[road_mask]


def paint_farmstead(
    rng: np.random.Generator,
    canvas: NDArray[np.float32],
    site: Polygon,
    roads: list[tuple[Polygon, Polygon]],
    shape: tuple[int, int],
) -> None:
    """A mown lawn, a gravel yard and drive, bright roofs with shadows, and a few trees."""
    if site.is_empty:
        return
    site_mask = burn(site, shape)
    lawn = textured(rng, shape, _LAWN_RGB, noise=4.0, blotch=6.0, blotch_scale=8.0)
    canvas[site_mask] = lawn[site_mask]
    angle = long_axis_angle(roads[0][0].minimum_rotated_rectangle) if roads else 0.0
    centre = np.asarray(site.centroid.coords[0])
    side = np.sqrt(site.area)
    yard = affinity.rotate(
        shapely.box(*(centre - side * 0.28), *(centre + side * 0.28)), angle, origin=tuple(centre)
    )
    gravel = textured(rng, shape, _GRAVEL_RGB, noise=5.0, blotch=5.0, blotch_scale=6.0)
    if roads:
        road, verges = roads[0]
        nearest = shapely.get_coordinates(shapely.shortest_line(road, shapely.Point(centre)))[0]
        drive = LineString([nearest, centre]).buffer(2.5)
        drive_mask = burn(drive, shape) & (site_mask | burn(verges.difference(road), shape))
        canvas[drive_mask] = gravel[drive_mask]
    yard_mask = burn(yard, shape) & site_mask
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
        shadow = burn(affinity.translate(building, -2.5, -2.5), shape) & site_mask
        canvas[shadow] *= 0.55
    roof_noise = rng.normal(0.0, 2.5, (*shape, 3)).astype(np.float32)
    for building in buildings:
        roof_rgb = np.asarray(_ROOF_RGBS[int(rng.integers(len(_ROOF_RGBS)))], dtype=np.float32)
        roof_mask = burn(building, shape)
        canvas[roof_mask] = roof_rgb + roof_noise[roof_mask]
    crowns = np.zeros(shape, dtype=np.uint8)
    for _ in range(int(rng.integers(6, 14))):
        spot = centre + rng.uniform(-0.45, 0.45, 2) * side
        radius = int(rng.integers(3, 7))
        if not any(building.buffer(radius).contains(shapely.Point(spot)) for building in buildings):
            cv2.circle(crowns, tuple(int(v) for v in np.rint(spot)), radius, 1, -1, cv2.LINE_AA)
    crown_mask = crowns.astype(bool)
    canvas[np.roll(crown_mask, (-2, -2), axis=(0, 1)) & ~crown_mask] *= 0.6
    trees = textured(rng, shape, _WOODLAND_RGB, noise=6.0, blotch=8.0, blotch_scale=3.0)
    canvas[crown_mask] = trees[crown_mask]


def grass(rng: np.random.Generator, shape: tuple[int, int]) -> NDArray[np.float32]:
    """(H, W, 3) float32: the grass everything else of a scene is painted over."""
    return textured(rng, shape, _GRASS_RGB, noise=5.0, blotch=8.0, blotch_scale=30.0)


def textured(
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


def burn(geometry: Polygon, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """(H, W) bool mask of the pixels whose centres lie in a geometry (pixel coordinates)."""
    if geometry.is_empty:
        return np.zeros(shape, dtype=bool)
    return rasterize([(geometry, 1)], out_shape=shape, fill=0, dtype="uint8").astype(bool)
