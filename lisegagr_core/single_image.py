"""One image file in, the method's outputs on disk: the `lisegagr segment` job, as a library call.

For each image: read and normalise it (any band count or bit depth), resize it the way the
method expects (longer side `working_size`), segment it, bring the labels back to the image's
own size, and write next to each other in the output folder:

- ``<stem>.labels.tif``: uint32 instance ids (0 background), georeferenced when the input was;
- ``<stem>.instances.csv`` (or ``.parquet``): one row per instance;
- ``<stem>.overlay.png``: the image with instances coloured and outlined;
- ``<stem>.json``: LabelMe / X-AnyLabeling polygons (label "1"), to correct by hand.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from lisegagr_core.config import EngineConfig
from lisegagr_core.engine import Segmentation, segment_image
from lisegagr_core.image_outputs import (
    write_instance_table,
    write_label_raster,
    write_labelme,
    write_overlay_png,
)
from lisegagr_core.imagery import LoadedImage, read_image, resize_labels, resize_to_working_size
from lisegagr_core.sources import MaskSource

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """What `segment_file` wrote for one image, and how long it took."""

    image: str
    instances: int
    labels_path: Path
    table_path: Path
    overlay_path: Path
    labelme_path: Path
    seconds: float
    notes: tuple[str, ...]


INSTANCE_COLUMNS = (
    "id",
    "area",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "stage",
    "predicted_iou",
    "stability_score",
)


def instance_table(
    labels: NDArray[np.uint32], segmentation: Segmentation
) -> list[dict[str, object]]:
    """One row per instance present in `labels` (the segmentation's labels, maybe resized).

    Area and box (inclusive XYXY pixels) are measured on `labels`; stage and SAM's scores come
    from the segmentation. An instance lost by shrinking the labels has no row.
    """
    count = len(segmentation.instances)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    boxes = ndimage.find_objects(labels.astype(np.int64), max_label=count)
    rows: list[dict[str, object]] = []
    for instance, area, box in zip(segmentation.instances, areas, boxes, strict=True):
        if box is None:
            continue
        rows.append(
            {
                "id": instance.id,
                "area": int(area),
                "bbox_x0": box[1].start,
                "bbox_y0": box[0].start,
                "bbox_x1": box[1].stop - 1,
                "bbox_y1": box[0].stop - 1,
                "stage": instance.stage,
                "predicted_iou": instance.predicted_iou,
                "stability_score": instance.stability_score,
            }
        )
    return rows


def segment_loaded(
    loaded: LoadedImage, source: MaskSource, config: EngineConfig
) -> tuple[NDArray[np.uint32], Segmentation]:
    """Segment an image at the working size; labels returned at the image's own size."""
    working, scale = resize_to_working_size(loaded.rgb, config.working_size)
    segmentation = segment_image(working, source, config)
    labels = segmentation.labels
    if scale != 1.0:
        labels = resize_labels(labels, loaded.rgb.shape[:2])
    return labels, segmentation


def segment_file(
    path: str | Path,
    source: MaskSource,
    config: EngineConfig,
    out_dir: Path,
    *,
    table_format: str = "csv",
    bands: Sequence[int] | None = None,
) -> ImageResult:
    """Read (`bands`: see `read_image`), segment and write one image; raises `InputError` for
    unusable input."""
    started = time.perf_counter()
    loaded = read_image(path, bands=bands)
    labels, segmentation = segment_loaded(loaded, source, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(path).stem
    result = ImageResult(
        image=str(path),
        instances=len(segmentation.instances),
        labels_path=out_dir / f"{stem}.labels.tif",
        table_path=out_dir / f"{stem}.instances.{table_format}",
        overlay_path=out_dir / f"{stem}.overlay.png",
        labelme_path=out_dir / f"{stem}.json",
        seconds=0.0,
        notes=loaded.notes,
    )
    write_label_raster(result.labels_path, labels, crs=loaded.crs, transform=loaded.transform)
    write_instance_table(result.table_path, instance_table(labels, segmentation), INSTANCE_COLUMNS)
    write_overlay_png(result.overlay_path, loaded.rgb, labels)
    # LabelMe expects the image beside its JSON; point at the original by a relative path.
    image_name = os.path.relpath(Path(path).resolve(), out_dir.resolve())
    write_labelme(result.labelme_path, labels, image_name)
    seconds = time.perf_counter() - started
    log.info("%s: %d instances in %.1f s", path, result.instances, seconds)
    return dataclasses.replace(result, seconds=seconds)
