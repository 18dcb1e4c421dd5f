"""Images with field polygons, found on disk, rasterised, split by image and sized for a SAM.

Three layouts are read, through the shared readers of `lisegagr_core.annotations`:

- a VGG Image Annotator JSON file (its images beside it or in an ``images/`` folder beside it),
  as ``../shared/data/agoro-naip/annotations.json``;
- LabelMe / X-AnyLabeling JSON files, each naming its image relative to itself;
- GeoJSON files next to a georeferenced raster of the same stem (``field.tif`` +
  ``field.geojson``); the polygons are taken in the raster's CRS when they overlap it, in the CRS
  that the file's legacy ``crs`` member names, or else as longitude / latitude (RFC 7946).

`DATA` is one such file, or a folder whose ``*.json`` / ``*.geojson`` files are any of them.
Every polygon, whatever its label, is an instance to segment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_geom
from shapely.geometry import Polygon, box, mapping, shape

from lisegagr_core.annotations import (
    AnnotatedPolygon,
    annotation_layout,
    rasterize_instances,
    read_geojson,
    read_labelme,
    read_via,
)
from lisegagr_core.errors import InputError
from lisegagr_core.imagery import (
    RASTER_SUFFIXES,
    read_image,
    resize_labels,
    resize_to_working_size,
)

log = logging.getLogger(__name__)

#: Label value of pixels added to make an image square; they are neither field nor ground.
PADDING_LABEL = -1

_WGS84 = CRS.from_epsg(4326)


@dataclass(frozen=True)
class AnnotatedSource:
    """One image file and the polygons drawn on it.

    polygons are in pixel coordinates, or in map coordinates when `georeferenced` (GeoJSON),
    in which case `polygon_crs` is their CRS when the file declares one.
    """

    name: str
    image_path: Path
    polygons: tuple[AnnotatedPolygon, ...]
    annotation_path: Path
    georeferenced: bool = False
    polygon_crs: str | None = None


@dataclass(frozen=True, eq=False)
class AnnotatedScene:
    """An image and its field instances at the image's own size.

    rgb: (H, W, 3) uint8; instances: (H, W) uint32, 0 = not a field, k > 0 = polygon k.
    """

    name: str
    rgb: NDArray[np.uint8]
    instances: NDArray[np.uint32]


@dataclass(frozen=True, eq=False)
class TrainingImage:
    """An image resized and padded to the model's square input.

    rgb: (S, S, 3) uint8; labels: (S, S) int32, 0 = ground, k > 0 = field k, `PADDING_LABEL`
    where the image was padded to a square.
    """

    name: str
    rgb: NDArray[np.uint8]
    labels: NDArray[np.int32]

    @property
    def field_count(self) -> int:
        """Fields with at least one pixel at this size."""
        return int(np.unique(self.labels[self.labels > 0]).size)


@dataclass(frozen=True)
class TrainingSet:
    """Images for training and images held out of it, all at the model's input size."""

    source: str
    train: tuple[TrainingImage, ...]
    validation: tuple[TrainingImage, ...]

    def counts(self) -> dict[str, int]:
        """Image and field counts of both parts, for summaries."""
        return {
            "train_images": len(self.train),
            "train_fields": sum(image.field_count for image in self.train),
            "validation_images": len(self.validation),
            "validation_fields": sum(image.field_count for image in self.validation),
        }


def find_annotated_images(data: Path) -> list[AnnotatedSource]:
    """Every annotated image of `data` (a file or a folder), sorted by name.

    Raises InputError, one sentence naming the file, when nothing annotated is found, when
    annotations name images that do not exist, or when the annotations hold no polygon.
    """
    if not data.exists():
        raise InputError(f"{data}: no such file or folder.")
    if data.is_dir():
        candidates = sorted(p for p in data.iterdir() if p.suffix.lower() in (".json", ".geojson"))
    elif data.suffix.lower() in RASTER_SUFFIXES:
        candidates = [p for p in _sidecars(data) if p.is_file()]
    else:
        candidates = [data]
    sources: list[AnnotatedSource] = []
    for path in candidates:
        kind = annotation_layout(path)
        if kind is None:
            if data.is_dir():
                log.info("%s is not an annotation file; skipped", path)
                continue
            raise InputError(
                f"{path} is not a VGG Image Annotator, LabelMe or GeoJSON annotation file."
            )
        sources.extend(_READERS[kind](path))
    if not sources:
        raise InputError(
            f"{data}: no annotated images found (expected a VGG Image Annotator JSON file, "
            "LabelMe JSON files, or GeoJSON files next to rasters of the same name)."
        )
    names = [source.name for source in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"{data}: several annotation files describe {repeated[0]}.")
    if not any(source.polygons for source in sources):
        raise InputError(f"{data}: the annotations of {len(sources)} images hold no polygons.")
    return sorted(sources, key=lambda source: source.name)


def read_scene(source: AnnotatedSource) -> AnnotatedScene:
    """The image of `source` as 8-bit RGB and its polygons rasterised to instance ids."""
    loaded = read_image(source.image_path)
    polygons: Sequence[AnnotatedPolygon] = source.polygons
    transform = None
    if source.georeferenced:
        if loaded.transform is None:
            raise InputError(
                f"{source.image_path} has no georeference, so the map coordinates of "
                f"{source.annotation_path} cannot be placed on it."
            )
        transform = loaded.transform
        polygons = _polygons_in_raster_crs(source, loaded.crs, transform, loaded.shape)
    return AnnotatedScene(
        name=source.name,
        rgb=loaded.rgb,
        instances=rasterize_instances(polygons, loaded.shape, transform),
    )


def iter_scenes(sources: Sequence[AnnotatedSource]) -> Iterator[AnnotatedScene]:
    """`read_scene` of each source in turn, so only one full-size image is held at a time."""
    for source in sources:
        yield read_scene(source)


def load_scenes(data: Path, names: Sequence[str] | None = None) -> list[AnnotatedScene]:
    """The annotated images of `data` at their own size: all of them, or those in `names`.

    A name that `data` does not annotate raises InputError.
    """
    sources = find_annotated_images(data)
    if names is None:
        return [read_scene(source) for source in sources]
    by_name = {source.name: source for source in sources}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise InputError(f"{data} has no annotated image {missing[0]}.")
    return [read_scene(by_name[name]) for name in names]


def to_training_image(scene: AnnotatedScene, size: int) -> TrainingImage:
    """`scene` resized so its longer side is `size` and padded (bottom, right) to a square.

    The image is area-averaged when shrinking, the instance ids resized by nearest neighbour;
    padding is black with label `PADDING_LABEL`.
    """
    rgb, _ = resize_to_working_size(scene.rgb, size)
    height, width = rgb.shape[:2]
    labels = resize_labels(scene.instances, (height, width)).astype(np.int32)
    square_rgb = np.zeros((size, size, 3), dtype=np.uint8)
    square_rgb[:height, :width] = rgb
    square_labels = np.full((size, size), PADDING_LABEL, dtype=np.int32)
    square_labels[:height, :width] = labels
    return TrainingImage(name=scene.name, rgb=square_rgb, labels=square_labels)


def split_by_image(
    names: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(train, validation) names: a seeded random `val_fraction` of the images held out.

    At least one image is held out when `val_fraction` > 0 and there are two or more images,
    and at least one is always left for training. Both lists come back sorted.
    """
    ordered = sorted(names)
    if val_fraction <= 0 or len(ordered) < 2:
        return ordered, []
    count = min(len(ordered) - 1, max(1, round(val_fraction * len(ordered))))
    held_out = set(np.random.default_rng(seed).permutation(len(ordered))[:count].tolist())
    train = [name for i, name in enumerate(ordered) if i not in held_out]
    validation = [name for i, name in enumerate(ordered) if i in held_out]
    return train, validation


def load_training_set(data: Path, size: int, val_fraction: float, seed: int) -> TrainingSet:
    """The annotated images of `data` at `size` px, split into training and validation by image."""
    sources = find_annotated_images(data)
    _, validation_names = split_by_image([source.name for source in sources], val_fraction, seed)
    held_out = set(validation_names)
    train: list[TrainingImage] = []
    validation: list[TrainingImage] = []
    for scene in iter_scenes(sources):
        (validation if scene.name in held_out else train).append(to_training_image(scene, size))
    log.info("%d training and %d validation images from %s", len(train), len(validation), data)
    return TrainingSet(source=str(data), train=tuple(train), validation=tuple(validation))


def _via_sources(path: Path) -> list[AnnotatedSource]:
    polygons_by_image = read_via(path)
    sources, missing = [], []
    for file_name, polygons in polygons_by_image.items():
        candidates = [path.parent / file_name, path.parent / "images" / file_name]
        image_path = next((c for c in candidates if c.is_file()), None)
        if image_path is None:
            missing.append(file_name)
            continue
        sources.append(AnnotatedSource(file_name, image_path, tuple(polygons), path))
    if missing:
        raise InputError(
            f"{path} names {len(missing)} images found neither beside it nor in "
            f"{path.parent / 'images'} (e.g. {missing[0]})."
        )
    return sources


def _labelme_sources(path: Path) -> list[AnnotatedSource]:
    image_name, polygons = read_labelme(path)
    image_path = path.parent / image_name
    if not image_path.is_file():
        raise InputError(f"{path} names the image {image_name}, which is not at {image_path}.")
    return [AnnotatedSource(image_path.name, image_path, tuple(polygons), path)]


def _geojson_sources(path: Path) -> list[AnnotatedSource]:
    rasters = [path.with_suffix(suffix) for suffix in RASTER_SUFFIXES]
    image_path = next((raster for raster in rasters if raster.is_file()), None)
    if image_path is None:
        raise InputError(
            f"{path} has no raster of the same name beside it "
            f"({', '.join('*' + suffix for suffix in RASTER_SUFFIXES)})."
        )
    return [
        AnnotatedSource(
            image_path.name,
            image_path,
            tuple(read_geojson(path)),
            path,
            georeferenced=True,
            polygon_crs=_declared_crs(path),
        )
    ]


_READERS = {"via": _via_sources, "labelme": _labelme_sources, "geojson": _geojson_sources}


def _sidecars(raster: Path) -> list[Path]:
    return [raster.with_suffix(".geojson"), raster.with_suffix(".json")]


def _declared_crs(path: Path) -> str | None:
    """The CRS named by a GeoJSON file's legacy ``crs`` member, if it has one."""
    raw: Any = json.loads(path.read_text(encoding="utf-8"))
    crs = raw.get("crs") if isinstance(raw, dict) else None
    name = crs.get("properties", {}).get("name") if isinstance(crs, dict) else None
    return name if isinstance(name, str) else None


def _polygons_in_raster_crs(
    source: AnnotatedSource, raster_crs: CRS | None, transform: Affine, shape_hw: tuple[int, int]
) -> list[AnnotatedPolygon]:
    """The polygons of a GeoJSON source in the raster's CRS (see the module docstring)."""
    height, width = shape_hw
    corners = [transform @ (0, 0), transform @ (width, height)]
    (x0, y0), (x1, y1) = corners
    footprint = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    if source.polygon_crs is not None:
        try:
            polygon_crs = CRS.from_user_input(source.polygon_crs)
        except CRSError:
            raise InputError(
                f"{source.annotation_path} declares the CRS {source.polygon_crs!r}, "
                "which is not one rasterio knows."
            ) from None
    elif any(item.polygon.intersects(footprint) for item in source.polygons):
        return list(source.polygons)
    else:
        polygon_crs = _WGS84
    if raster_crs is None or polygon_crs == raster_crs:
        return list(source.polygons)
    return [
        AnnotatedPolygon(_reprojected(item.polygon, polygon_crs, raster_crs), item.label)
        for item in source.polygons
    ]


def _reprojected(polygon: Polygon, source_crs: CRS, target_crs: CRS) -> Polygon:
    geometry = shape(transform_geom(source_crs, target_crs, mapping(polygon)))
    return geometry if isinstance(geometry, Polygon) else Polygon()
