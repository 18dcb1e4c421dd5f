"""Tasks are retried only on errors that may pass; an InputError fails at once."""

from __future__ import annotations

import pytest
from prefect.states import Failed

import tasks.mosaic
import tasks.tiles
from lisegagr_core.errors import InputError, TransientError
from tasks.retries import is_transient, retry_if_transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (InputError("scene.tif is truncated"), False),
        (TransientError("s3://imagery/scene.tif could not be read"), True),
        (OSError("injected transient read error"), True),
        (ConnectionResetError("reset by peer"), True),
        (FileNotFoundError("gone"), False),
        (PermissionError("denied"), False),
        (MemoryError(), True),
        (ValueError("a bug"), False),
    ],
)
def test_only_errors_that_may_pass_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
    assert retry_if_transient(None, None, Failed(data=error)) is transient


def test_every_retried_task_retries_only_transient_errors() -> None:
    found = [
        value
        for module in (tasks.tiles, tasks.mosaic)
        for value in vars(module).values()
        if hasattr(value, "retries") and hasattr(value, "retry_condition_fn")
    ]
    from tasks import STAGE_TASKS

    assert {id(t) for t in found} == {id(t) for t, _ in STAGE_TASKS.values()}  # every stage
    for task in found:
        assert task.retries > 0
        assert task.retry_condition_fn is retry_if_transient, task.name


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_prefect_tries_an_input_error_once_and_an_os_error_again() -> None:
    from prefect import flow, task

    attempts: list[str] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_if_transient)
    def read(error: type[Exception]) -> None:
        attempts.append(error.__name__)
        raise error("the tile could not be read")

    @flow
    def region() -> None:
        for error in (InputError, OSError):
            with pytest.raises(error):
                read(error)

    region()
    assert attempts == ["InputError", "OSError", "OSError", "OSError"]
