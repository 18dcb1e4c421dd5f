"""When a failed task is tried again: only for errors that may pass (storage, network, memory).

An `InputError` (a truncated raster, a bad band, a corrupt local block) fails the same way
every time, so it fails at once instead of after the back-off.
"""

from __future__ import annotations

from typing import Any

from lisegagr_core.errors import InputError, TransientError

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
