"""Recording a trained model in the weights manifest, so `load_sam(NAME)` builds and loads it.

A project-trained entry has ``"arch": "custom"``, ``"url": null`` (the file is committed next
to the manifest), the exact architecture, the file's size and sha256, the AMG settings tuned for
it, and the name of its model card (relative to the manifest's folder).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lisegagr_core.architectures import TINY_MODEL_NAME, SamArchitecture
from lisegagr_core.weights import (
    CheckpointSpec,
    Manifest,
    WeightsError,
    display_path,
    sha256_file,
)

log = logging.getLogger(__name__)

#: The ``arch`` of an entry whose ``architecture`` object is the whole truth.
CUSTOM_ARCH = "custom"
_NEW_MANIFEST_DESCRIPTION = (
    'Checkpoints lisegagr can load by name; project-trained models have "url": null and are '
    "committed next to this file."
)


def register_model(
    manifest_path: Path,
    model_path: Path,
    architecture: SamArchitecture,
    *,
    name: str | None = None,
    settings: Mapping[str, Any] | None = None,
    card_path: Path | None = None,
    source: str | None = None,
    make_default: bool = False,
    input_gsd_m: float | None = None,
) -> CheckpointSpec:
    """Add or update the manifest entry of the model saved at `model_path`; return it.

    `name` defaults to the file's stem. The model must lie in the manifest's folder (entries
    name a bare file there). `settings` are AMG settings; None keeps those of an entry whose
    file is unchanged and records none otherwise. `make_default` makes it the model used when
    none is configured. `input_gsd_m` records the metres per input pixel of its training
    imagery (None keeps an earlier entry's). A manifest that does not exist yet is created. The
    new manifest is validated before it replaces the old one; problems raise WeightsError.
    """
    name = name or model_path.stem
    folder = manifest_path.resolve().parent
    if model_path.resolve().parent != folder:
        raise WeightsError(
            f"{display_path(model_path)} must lie in {display_path(folder)}, the folder of the "
            "manifest that names it"
        )
    if name == TINY_MODEL_NAME:
        raise WeightsError(f"'{TINY_MODEL_NAME}' is a built-in model; choose another name")
    raw = _read_raw(manifest_path)
    previous = raw["checkpoints"].get(name)
    if previous is not None and previous.get("url") is not None:
        raise WeightsError(
            f"{name} in {display_path(manifest_path)} is a downloadable checkpoint; "
            "choose another name for a trained model"
        )
    sha256 = sha256_file(model_path)
    if settings is None:
        unchanged = previous is not None and previous.get("sha256") == sha256
        settings = previous.get("settings", {}) if unchanged and previous is not None else {}
    entry: dict[str, Any] = {
        "arch": CUSTOM_ARCH,
        "url": None,
        "filename": model_path.name,
        "size": model_path.stat().st_size,
        "sha256": sha256,
        "architecture": architecture.to_dict(),
        "settings": dict(settings),
    }
    if card_path is not None:
        entry["card"] = os.path.relpath(card_path.resolve(), folder)
    if source is not None:
        entry["source"] = source
    if input_gsd_m is None and previous is not None:
        input_gsd_m = previous.get("input_gsd_m")
    if input_gsd_m is not None:
        entry["input_gsd_m"] = round(float(input_gsd_m), 3)
    raw["checkpoints"][name] = entry
    if make_default:
        raw["default"] = name
    _write_validated(manifest_path, raw)
    log.info("registered %s in %s", name, display_path(manifest_path))
    return Manifest.load(manifest_path).entries[name]


def register_classifier(
    manifest_path: Path,
    classifier_path: Path,
    *,
    card_path: Path | None = None,
    source: str | None = None,
) -> None:
    """Make the classifier saved at `classifier_path` (in the manifest's folder) the default
    classifier of the manifest: the one runs use when they name none."""
    folder = manifest_path.resolve().parent
    if classifier_path.resolve().parent != folder:
        raise WeightsError(
            f"{display_path(classifier_path)} must lie in {display_path(folder)}, the folder of "
            "the manifest that names it"
        )
    raw = _read_raw(manifest_path)
    entry: dict[str, Any] = {
        "filename": classifier_path.name,
        "size": classifier_path.stat().st_size,
        "sha256": sha256_file(classifier_path),
    }
    if card_path is not None:
        entry["card"] = os.path.relpath(card_path.resolve(), folder)
    if source is not None:
        entry["source"] = source
    raw["classifier"] = entry
    _write_validated(manifest_path, raw)
    log.info("registered %s as the default classifier", display_path(classifier_path))


def _read_raw(manifest_path: Path) -> dict[str, Any]:
    """The manifest's JSON (validated first), or a new empty manifest when there is none."""
    if not manifest_path.exists():
        return {
            "description": _NEW_MANIFEST_DESCRIPTION,
            "default": TINY_MODEL_NAME,
            "checkpoints": {},
        }
    Manifest.load(manifest_path)
    raw: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    return raw


def _write_validated(manifest_path: Path, raw: Mapping[str, Any]) -> None:
    """Write `raw` beside the manifest, load it as a Manifest, then move it into place."""
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=manifest_path.parent, prefix=f".{manifest_path.name}.", suffix=".part"
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
        Manifest.load(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a manifest is shared
        os.replace(temporary, manifest_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
