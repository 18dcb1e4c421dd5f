"""Region-wide tasks: merge tiles into global ids, write the mosaic's chunks, vectorise.

Each wraps a stage of `lisegagr_core.run.stages` with retries on transient errors (storage,
network: `retries.retried_task`).
"""

from __future__ import annotations

from lisegagr_core.run.stages import (
    create_region_mosaic,
    instance_attributes,
    merge_tiles,
    vectorise,
    write_chunk_row,
)
from tasks.retries import retried_task

merge_tiles_task = retried_task(merge_tiles, "merge-tiles")
attributes_task = retried_task(instance_attributes, "attributes")
create_mosaic_task = retried_task(create_region_mosaic, "create-mosaic")
write_chunk_row_task = retried_task(
    write_chunk_row, "write-chunks", task_run_name="write chunk row {chunk_row}"
)
vectorise_task = retried_task(vectorise, "vectorise")
