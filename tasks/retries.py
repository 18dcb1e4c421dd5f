"""When a failed task is tried again: only for errors that may pass (storage, network, memory).

An `InputError` (a truncated raster, a bad band, a corrupt local block) fails the same way
every time, so it fails at once instead of after the back-off. Every stage's task is made by
`retried_task`, so all retry alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from lisegagr_core.errors import InputError, TransientError

#: Tries after the first, the seconds before each, and how much each may vary (±50 %).
RETRIES, JITTER = 3, 0.5
BACKOFF: list[float] = [1.0, 4.0, 16.0]

#: Exceptions of storage and network clients whose names say "try again".
TRANSIENT_NAMES = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ThrottlingException",
    "SlowDown",
    "OutOfMemoryError",
}

#: OSErrors that name a state of the storage that a retry does not change.
LASTING_OS_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)


def is_transient(error: BaseException) -> bool:
    """Whether `error` may pass when the task is tried again."""
    if isinstance(error, InputError):
        return False
    if isinstance(error, TransientError | MemoryError | TimeoutError | ConnectionError):
        return True
    if {cls.__name__ for cls in type(error).__mro__} & TRANSIENT_NAMES:
        return True
    if isinstance(error, OSError):
        return not isinstance(error, LASTING_OS_ERRORS)
    return "out of memory" in str(error).lower()


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry a failed task run only on a transient error."""
    error = state.data
    if not isinstance(error, BaseException):
        error = state.result(raise_on_failure=False)
    return not isinstance(error, BaseException) or is_transient(error)


def retried_task(stage: Callable[..., Any], name: str, **options: Any) -> Any:
    """`stage` as a Prefect task named `name`, tried again (`RETRIES`, `BACKOFF`) on transient
    errors only. Prefect's result cache is off: the run's store is the cache (a stage skips
    what is stored). `options` go to `prefect.task` (e.g. ``task_run_name``)."""
    return task(
        name=name,
        cache_policy=NO_CACHE,
        retries=RETRIES,
        retry_delay_seconds=BACKOFF,
        retry_jitter_factor=JITTER,
        retry_condition_fn=retry_if_transient,
        **options,
    )(stage)
