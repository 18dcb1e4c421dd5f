"""Set-up of the worker processes of a local Dask cluster (a Dask preload module).

A local cluster's scheduler lives in the run's own process and closes when the run ends. A
worker whose heartbeat is in flight at that moment logs "Failed to communicate with scheduler
during heartbeat" with a 30-line traceback (dask/distributed#7105): every run would end with a
traceback that means only "the run is over". This module drops that one record in local
workers; every other worker log, and the same record on a shared cluster, stays.

    LocalCluster(..., preload=["flows.local_worker"])
"""

from __future__ import annotations

import logging
from typing import Any

HEARTBEAT_AFTER_SHUTDOWN = "Failed to communicate with scheduler during heartbeat"


class ShutdownHeartbeatFilter(logging.Filter):
    """Drops the worker's heartbeat failure; a local scheduler only goes away at shutdown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(HEARTBEAT_AFTER_SHUTDOWN)


def dask_setup(worker: Any) -> None:
    """Called by Dask in each worker process as it starts."""
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, ShutdownHeartbeatFilter) for f in logger.filters):
        logger.addFilter(ShutdownHeartbeatFilter())
