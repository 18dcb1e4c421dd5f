"""Fetching a checkpoint that the manifest (`weights`) lists with a download URL.

The download streams into a ``.part`` file beside its target, hashed as it is written, and is
moved into place only when its size and sha256 match the manifest.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from lisegagr_core.progress import ProgressCallback, ProgressUpdate, ignore_progress
from lisegagr_core.weights import (
    CheckpointSpec,
    WeightsError,
    display_path,
    fetch_hint,
    human_size,
    verify_checkpoint,
)

log = logging.getLogger(__name__)

_DOWNLOAD_CHUNK = 1 << 20


def fetch_checkpoint(
    spec: CheckpointSpec,
    weights_dir: Path,
    *,
    progress: ProgressCallback | None = None,
    timeout: float = 60,
) -> Path:
    """Download the checkpoint of `spec` into `weights_dir` and return its path.

    The download streams into a ``.part`` file in `weights_dir`, hashed as it is written,
    and is moved into place only when its size and sha256 match the manifest; otherwise the
    part file is deleted and WeightsError says what was expected. A checkpoint already there
    and valid is returned without a request; an invalid one is downloaded again.
    `timeout` is in seconds, per network operation. `progress` hears of each chunk written
    (task: the file name; done and total: bytes).
    """
    target = weights_dir / spec.filename
    if spec.url is None:
        raise WeightsError(f"{spec.name} cannot be fetched: {fetch_hint(spec)}")
    if target.is_file():
        try:
            verify_checkpoint(spec, target)
        except WeightsError as err:
            log.warning("%s; downloading it again", err)
        else:
            log.info("%s is already present and verified", display_path(target))
            return target
    weights_dir.mkdir(parents=True, exist_ok=True)
    part_path: Path | None = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=weights_dir, prefix=f"{spec.filename}.", suffix=".part", delete=False
        ) as part:
            part_path = Path(part.name)
            sha256, size = _download(spec, spec.url, part, progress=progress, timeout=timeout)
        if spec.size is not None and size != spec.size:
            raise WeightsError(
                f"{spec.url} sent {size} bytes but the manifest expects {spec.size}; "
                f"nothing was saved to {display_path(target)}, try again"
            )
        if sha256 != spec.sha256:
            raise WeightsError(
                f"{spec.url} has sha256 {sha256} but the manifest expects {spec.sha256}; "
                f"nothing was saved to {display_path(target)}"
            )
        os.replace(part_path, target)
    except BaseException:
        if part_path is not None:
            part_path.unlink(missing_ok=True)
        raise
    log.info("fetched %s (%s, sha256 verified)", display_path(target), human_size(size))
    return target


def _download(
    spec: CheckpointSpec,
    url: str,
    part: IO[bytes],
    *,
    progress: ProgressCallback | None,
    timeout: float,
) -> tuple[str, int]:
    """Stream `url` into `part`; return the sha256 and byte count of what was written."""
    digest = hashlib.sha256()
    written = 0
    request = urllib.request.Request(url, headers={"User-Agent": "lisegagr"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise WeightsError(f"downloading {url} failed with HTTP {err.code} {err.reason}") from err
    except (OSError, http.client.HTTPException) as err:
        raise WeightsError(f"downloading {url} failed ({err}); check the network") from err
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else spec.size
        report = progress or ignore_progress
        report(ProgressUpdate(spec.filename, 0, total))
        while True:
            try:
                block = response.read(_DOWNLOAD_CHUNK)
            except (OSError, http.client.HTTPException) as err:
                raise WeightsError(
                    f"downloading {url} broke off after {written} bytes ({err}); try again"
                ) from err
            if not block:
                break
            part.write(block)
            digest.update(block)
            written += len(block)
            report(ProgressUpdate(spec.filename, written, total))
    return digest.hexdigest(), written
