"""Training crops for the classifier, from labelled polygons: an ImageFolder tree split by image.

    report = build_crop_dataset([Path("annotations.json")], Path("crops"), SuperpixelNegatives())

writes ``crops/{train,test}/{field,nonfield}/*.png`` (square crops of `square_crops`) and
``crops/dataset.json`` (sources, negatives, which image went where, counts). The split is by
source image, seeded: every crop of an image is in the same split.

Polygons come from any file `ground_truth.read_polygon_sets` reads; label "1" is a field, "0"
is not, any other label is refused. Where only fields are outlined (as in
``../shared/data/agoro-naip``), non-field examples come from a `NegativeSource`: candidate
instances of the image of which those that hardly overlap a labelled polygon (a share below
`max_labelled_overlap`) are kept. Two sources:

- `EngineNegatives`: the instances the method itself segments (SAM, or any mask source): what
  the classifier meets in the pipeline, and no ground truth needed;
- `SuperpixelNegatives`: connected pieces of SLIC superpixels of the unlabelled area: cheap,
  for tests and CPU demos. Their outlines follow image edges as SAM's do, but they are not
  SAM instances; ``dataset.json`` says which source made the negatives.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray
from skimage.segmentation import slic

from lisegagr_core.annotations import rasterize_instances
from lisegagr_core.classify.crops import square_crops
from lisegagr_core.classify.model import CLASS_NAMES
from lisegagr_core.config import EngineConfig
from lisegagr_core.errors import InputError
from lisegagr_core.ground_truth import (
    PolygonSet,
    is_polygon_file,
    place_polygons,
    read_polygon_sets,
)
from lisegagr_core.imagery import LoadedImage, read_image
from lisegagr_core.masks import resplit_labels
from lisegagr_core.single_image import segment_loaded
from lisegagr_core.sources import MaskSource
from lisegagr_core.training.data import split_by_image as split_images

log = logging.getLogger(__name__)

#: Polygon label → class folder.
LABEL_CLASSES = {"1": "field", "0": "nonfield"}
SPLITS = ("train", "test")
MANIFEST_NAME = "dataset.json"
#: Crops cut per call, bounding the memory of one image's crops.
_CROP_BATCH = 64


class NegativeSource(Protocol):
    """Candidate non-field instances of an image."""

    @property
    def description(self) -> str:
        """What the candidates are, for the dataset's record."""
        ...

    def instances(self, image: LoadedImage, labelled: NDArray[np.bool_]) -> NDArray[np.uint32]:
        """(H, W) uint32 candidate ids (0 = none) over `image`; labelled: (H, W) polygon pixels."""
        ...


@dataclass(frozen=True)
class SuperpixelNegatives:
    """SLIC superpixels (skimage) of the unlabelled area, about `region_px` pixels each.

    Each superpixel is split into its connected components, as the method splits masks.
    """

    region_px: int = 5000
    compactness: float = 10.0

    @property
    def description(self) -> str:
        return (
            f"connected pieces of SLIC superpixels of the unlabelled area (about "
            f"{self.region_px} px each, compactness {self.compactness:g})"
        )

    def instances(self, image: LoadedImage, labelled: NDArray[np.bool_]) -> NDArray[np.uint32]:
        unlabelled = ~labelled
        if not unlabelled.any():
            return np.zeros(labelled.shape, np.uint32)
        segments = slic(
            image.rgb,
            n_segments=max(1, round(int(unlabelled.sum()) / self.region_px)),
            compactness=self.compactness,
            mask=unlabelled,
            start_label=1,
            channel_axis=-1,
        )
        pieces, _ = resplit_labels(segments, min_area=1)  # a superpixel may be in pieces
        return pieces


class EngineNegatives:
    """The method's own instances (`segment_loaded` with a mask source, e.g. SAM)."""

    def __init__(self, source: MaskSource, config: EngineConfig) -> None:
        self.source = source
        self.config = config
        self.description = f"instances segmented by the LiSegAgr engine with {source.name}"

    def instances(self, image: LoadedImage, labelled: NDArray[np.bool_]) -> NDArray[np.uint32]:
        labels, _ = segment_loaded(image, self.source, self.config)
        return labels


@dataclass(frozen=True)
class LabelledImage:
    """An image file and the polygon sets drawn on it (pixel or map coordinates)."""

    name: str
    image_path: Path
    polygon_sets: tuple[PolygonSet, ...]


class CombinedNegatives:
    """The candidates of `first`, then those of `then` over the unlabelled area `first` left.

    E.g. SAM's own non-field instances (what the pipeline meets, but few: a model trained on
    fields proposes little else), topped up with superpixel pieces of what SAM left.
    """

    def __init__(self, first: NegativeSource, then: NegativeSource) -> None:
        self.first, self.then = first, then
        self.description = f"{first.description}; then {then.description} of the rest"

    def instances(self, image: LoadedImage, labelled: NDArray[np.bool_]) -> NDArray[np.uint32]:
        first = self.first.instances(image, labelled)
        rest = self.then.instances(image, labelled | (first > 0))
        offset = np.uint32(first.max()) if first.size else np.uint32(0)
        return np.where((first == 0) & (rest > 0), rest + offset, first).astype(np.uint32)


@dataclass
class CropDatasetReport:
    """What `build_crop_dataset` wrote: crops per split and class, and where each image went."""

    root: str
    sources: list[str]
    negatives: str | None
    crop_size: int
    seed: int
    images: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {s: dict.fromkeys(CLASS_NAMES, 0) for s in SPLITS}
    )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def find_labelled_images(
    annotations: Sequence[Path], raster: Path | None = None
) -> list[LabelledImage]:
    """Every image the annotation files (or folders of them) label, sorted by name.

    Map-coordinate files go on `raster` when given, else on the raster of the same name beside
    them. An image labelled by two files is refused, as are files without polygons and two
    images of the same file name.
    """
    files: list[Path] = []
    for path in annotations:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if is_polygon_file(p)))
        else:
            files.append(path)
    by_image: dict[Path, list[PolygonSet]] = {}
    for file in files:
        for polygon_set in read_polygon_sets(file):
            image = raster if raster is not None and polygon_set.in_map_coordinates else None
            by_image.setdefault((image or polygon_set.find_image()).resolve(), []).append(
                polygon_set
            )
    images = []
    for image_path, sets in by_image.items():
        if len(sets) > 1 and not all(s.in_map_coordinates for s in sets):
            sources = ", ".join(str(s.source) for s in sets)
            raise InputError(f"{image_path} is labelled by several files ({sources}).")
        images.append(LabelledImage(image_path.name, image_path, tuple(sets)))
    if not any(s.polygons for image in images for s in image.polygon_sets):
        raise InputError(f"{', '.join(map(str, annotations))}: no labelled polygons found.")
    names = [image.name for image in images]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(
            f"several labelled images are named {repeated[0]}; crops are named after their "
            "image, so rename one of them."
        )
    return sorted(images, key=lambda image: image.name)


def split_by_image(names: Sequence[str], test_fraction: float, seed: int) -> dict[str, list[str]]:
    """{"train": [...], "test": [...]}: a seeded random `test_fraction` of the images held out,
    the same images that SAM training with the same seed holds out for validation.

    At least one image goes to each split when there are two or more; lists are sorted.
    """
    train, test = split_images(names, test_fraction, seed)
    return {"train": train, "test": test}


def labelled_instances(
    image: LabelledImage, loaded: LoadedImage
) -> tuple[NDArray[np.uint32], dict[int, str]]:
    """The image's polygons as (H, W) uint32 ids and each id's class folder.

    Raises `InputError` naming the file for a label other than "1" / "0" and for a polygon
    outside the image.
    """
    check_labels([image])
    polygons = []
    for polygon_set in image.polygon_sets:
        polygons.extend(
            place_polygons(
                polygon_set,
                loaded.shape,
                transform=loaded.transform,
                crs=loaded.crs,
                image_name=str(image.image_path),
            )
        )
    ids = rasterize_instances(polygons, loaded.shape)
    return ids, {i + 1: LABEL_CLASSES[item.label] for i, item in enumerate(polygons)}


def check_labels(images: Sequence[LabelledImage]) -> None:
    """`InputError` naming the file, polygon and label for any label other than "1" or "0"."""
    for image in images:
        for polygon_set in image.polygon_sets:
            for index, item in enumerate(polygon_set.polygons):
                if item.label not in LABEL_CLASSES:
                    raise InputError(
                        f"{polygon_set.source}: polygon {index} on {image.name} has the label "
                        f"{item.label!r}; the classifier's labels are '1' (field) and '0' "
                        "(not a field)."
                    )


def select_negatives(
    candidates: NDArray[np.integer],
    labelled: NDArray[np.bool_],
    *,
    max_labelled_overlap: float,
    min_area: int,
) -> NDArray[np.int64]:
    """Ids of candidates (H, W) with at least `min_area` px, under the overlap share of polygons."""
    flat = candidates.ravel().astype(np.int64)
    areas = np.bincount(flat)
    overlap = np.bincount(flat[labelled.ravel()], minlength=len(areas))
    ids = np.flatnonzero(areas >= max(min_area, 1))
    ids = ids[ids > 0]
    return ids[overlap[ids] < max_labelled_overlap * areas[ids]]


def build_crop_dataset(
    annotations: Sequence[Path],
    out_dir: Path,
    negatives: NegativeSource | None = None,
    *,
    raster: Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    crop_size: int = 224,
    min_area: int = 50,
    max_labelled_overlap: float = 0.05,
    max_negatives_per_image: int | None = None,
    overwrite: bool = False,
    on_image: Callable[[str, dict[str, int], int], None] | None = None,
) -> CropDatasetReport:
    """Cut every labelled polygon (and negatives, when a source is given) into square crops.

    annotations: annotation files or folders of them (see `find_labelled_images`). Instances
    under `min_area` px are left out (default: the method's smallest component). With
    `max_negatives_per_image`, a seeded random subset of each image's negatives is kept.
    on_image(name, crops per class, images in all) is called after each image. Raises
    `InputError` for bad labels, polygons outside their image, and an `out_dir` that already
    holds crops (unless `overwrite`, which deletes them first).
    """
    images = find_labelled_images(annotations, raster)
    check_labels(images)
    _prepare(out_dir, overwrite)
    split = split_by_image([image.name for image in images], test_fraction, seed)
    split_of = {name: part for part, names in split.items() for name in names}
    report = CropDatasetReport(
        root=str(out_dir),
        sources=[str(path) for path in annotations],
        negatives=negatives.description if negatives is not None else None,
        crop_size=crop_size,
        seed=seed,
        images=split,
    )
    rng = np.random.default_rng(seed)
    for image in images:
        loaded = read_image(image.image_path)
        ids, classes = labelled_instances(image, loaded)
        present = set(np.unique(ids).tolist())
        areas = np.bincount(ids.ravel())
        crops = {
            instance_id: ("p", class_name)
            for instance_id, class_name in classes.items()
            if instance_id in present and areas[instance_id] >= min_area
        }
        jobs = [(ids, crops)]
        if negatives is not None:
            labelled = ids > 0
            candidates = negatives.instances(loaded, labelled)
            chosen = select_negatives(
                candidates, labelled, max_labelled_overlap=max_labelled_overlap, min_area=min_area
            )
            if max_negatives_per_image is not None and len(chosen) > max_negatives_per_image:
                chosen = np.sort(rng.choice(chosen, max_negatives_per_image, replace=False))
            jobs.append((candidates, {int(i): ("n", "nonfield") for i in chosen}))
        part = split_of[image.name]
        written = dict.fromkeys(CLASS_NAMES, 0)
        for labels, wanted in jobs:
            for instance_id, (origin, class_name), crop in _cut(
                loaded.rgb, labels, wanted, crop_size
            ):
                stem = Path(image.name).stem
                path = out_dir / part / class_name / f"{stem}_{origin}{instance_id:05d}.png"
                cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                written[class_name] += 1
        for class_name, count in written.items():
            report.counts[part][class_name] += count
        log.info("%s (%s): %s", image.name, part, written)
        if on_image is not None:
            on_image(image.name, written, len(images))
    (out_dir / MANIFEST_NAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _cut(
    rgb: NDArray[np.uint8],
    labels: NDArray[np.integer],
    wanted: dict[int, tuple[str, str]],
    size: int,
) -> list[tuple[int, tuple[str, str], NDArray[np.uint8]]]:
    """(id, what, (size, size, 3) uint8 crop) for each wanted id, cut in batches."""
    ids = sorted(wanted)
    out: list[tuple[int, tuple[str, str], NDArray[np.uint8]]] = []
    for start in range(0, len(ids), _CROP_BATCH):
        batch = ids[start : start + _CROP_BATCH]
        crops = square_crops(rgb, labels, batch, size).permute(0, 2, 3, 1).numpy()
        out.extend((i, wanted[i], crop) for i, crop in zip(batch, crops, strict=True))
    return out


def _prepare(out_dir: Path, overwrite: bool) -> None:
    """Empty class folders under `out_dir`; refuse to mix with crops already there."""
    existing = [out_dir / part for part in SPLITS if (out_dir / part).exists()]
    if existing and not overwrite:
        raise InputError(
            f"{out_dir} already holds a crop dataset; choose another folder or overwrite it."
        )
    for folder in existing:
        shutil.rmtree(folder)
    for part in SPLITS:
        for class_name in CLASS_NAMES:
            (out_dir / part / class_name).mkdir(parents=True, exist_ok=True)
