"""Thin Prefect tasks over the stages of `lisegagr_core.run`: retries, resources, names.

A task holds no algorithm; what it computes is a library function that runs without Prefect.
`STAGE_TASKS` is how the flow's executor finds the task of a stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lisegagr_core.run import stages
from tasks.mosaic import (
    attributes_task,
    create_mosaic_task,
    merge_tiles_task,
    vectorise_task,
    write_chunk_row_task,
)
from tasks.tiles import GPU, segment_batch_task

#: Each stage's task, and the resources it needs on a worker.
STAGE_TASKS: dict[Callable[..., Any], tuple[Any, dict[str, int]]] = {
    stages.segment_batch: (segment_batch_task, GPU),
    stages.merge_tiles: (merge_tiles_task, {}),
    stages.instance_attributes: (attributes_task, {}),
    stages.create_region_mosaic: (create_mosaic_task, {}),
    stages.write_chunk_row: (write_chunk_row_task, {}),
    stages.vectorise: (vectorise_task, {}),
}
