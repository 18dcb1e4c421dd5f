"""Storage problems as one sentence, and the up-front check that an output can be written.

    check_writable("s3://maps/county")      # StorageError before any tile is segmented
    with storage_errors("s3://maps/county/manifest.json"):
        read(...)                           # NoCredentialsError → StorageError, one sentence

A missing credential, an endpoint that does not answer, a denied request, a file where a
folder should be: each is the user's to fix, so each is an `InputError` naming the URL and the
cause, never a traceback of the storage client.
"""

from __future__ import annotations

import contextlib
import errno
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from lisegagr_core.errors import InputError


class StorageError(InputError):
    """A storage location cannot be read or written: the message names it and the cause."""


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _endpoint(exc: BaseException) -> str:
    found = re.search(r'endpoint URL: "(\w+://[^/"]+)', str(exc))
    return found.group(1) if found else "the storage endpoint"


def storage_problem(exc: BaseException, url: str) -> str | None:
    """One sentence for a storage exception (naming `url`), or None if `exc` is not one."""
    names = _names(exc)
    if names & {"NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"}:
        return (
            f"{url}: no storage credentials were found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)."
        )
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"}:
        return f"{url}: {_endpoint(exc)} cannot be reached (is the endpoint URL right and up?)."
    if isinstance(exc, PermissionError):
        return f"{url}: access denied (check the credentials, the bucket policy or permissions)."
    if isinstance(exc, NotADirectoryError | FileExistsError):
        return f"{url}: a file is in the way where a folder is needed."
    if isinstance(exc, IsADirectoryError):
        return f"{url}: a folder is in the way where a file is needed."
    if isinstance(exc, FileNotFoundError):
        return f"{url}: no such file, folder or bucket."
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
        return f"{url}: {exc.strerror.lower() if exc.strerror else 'cannot be written'}."
    return None


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn storage exceptions raised inside into a `StorageError` about `url`."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        problem = storage_problem(exc, url)
        if problem is None:
            raise
        raise StorageError(problem) from None


def check_writable(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Create the folder `url` (local or any fsspec URL) and write and delete a probe in it.

    Raises `StorageError` when that fails: missing credentials, a dead endpoint, a denied
    request, a file in the way, a read-only or full file system.
    """
    with storage_errors(url):
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        if fs.isfile(path):
            raise StorageError(f"{url}: a file is in the way where a folder is needed.")
        if isinstance(fs, LocalFileSystem):  # object stores have no folders (nor make buckets)
            fs.makedirs(path, exist_ok=True)
        probe = f"{path.rstrip('/')}/.lisegagr-probe-{uuid.uuid4().hex[:8]}"
        with fs.open(probe, "wb") as stream:
            stream.write(b"")
        fs.rm(probe)
