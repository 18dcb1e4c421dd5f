"""Region-wide tasks: merge tiles into global ids, write the mosaic's chunks, vectorise.

Each wraps a stage of `lisegagr_core.run.stages` with retries on transient storage errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from lisegagr_core.run.stages import (
    create_region_mosaic,
    instance_attributes,
    merge_tiles,
    vectorise,
    write_chunk_row,
)
from tasks.retries import retry_if_transient

#: Storage writes and reads fail transiently (S3, network): retry with backoff.
RETRIES, JITTER = 3, 0.5
BACKOFF: list[float] = [1.0, 4.0, 16.0]


def _storage_task(stage: Callable[..., Any], name: str, **options: Any) -> Any:
    return task(
        name=name,
        cache_policy=NO_CACHE,
        retries=RETRIES,
        retry_delay_seconds=BACKOFF,
        retry_jitter_factor=JITTER,
        retry_condition_fn=retry_if_transient,
        **options,
    )(stage)


merge_tiles_task = _storage_task(merge_tiles, "merge-tiles")
attributes_task = _storage_task(instance_attributes, "attributes")
create_mosaic_task = _storage_task(create_region_mosaic, "create-mosaic")
write_chunk_row_task = _storage_task(
    write_chunk_row, "write-chunks", task_run_name="write chunk row {chunk_row}"
)
vectorise_task = _storage_task(vectorise, "vectorise")
