"""SAM checkpoints on disk: the manifest that names them, and verifying them (fetching one is
`downloads.fetch_checkpoint`).

``weights/manifest.json`` lists the checkpoints lisegagr can load by name. Meta's three SAM
checkpoints have a download URL; a project-trained model has ``"url": null`` (it is
committed next to the manifest) and carries its architecture, the AMG settings it was tuned
with, and a model card. Every checkpoint is pinned by size and sha256, and nothing is loaded
or kept that does not match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lisegagr_core.architectures import ARCHITECTURES, TINY_MODEL_NAME, SamArchitecture
from lisegagr_core.config import AmgSettings, EngineConfig
from lisegagr_core.errors import LisegagrError

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_MANIFEST_PATH = DEFAULT_WEIGHTS_DIR / "manifest.json"

_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = frozenset(
    {
        "arch",
        "url",
        "filename",
        "size",
        "sha256",
        "architecture",
        "settings",
        "card",
        "source",
        "input_gsd_m",
    }
)
_MANIFEST_KEYS = frozenset({"description", "default", "checkpoints", "classifier"})
_CLASSIFIER_KEYS = frozenset({"filename", "size", "sha256", "card", "source"})


class WeightsError(LisegagrError):
    """A checkpoint is missing, corrupt or unusable; one sentence names the file and the fix."""


@dataclass(frozen=True)
class CheckpointSpec:
    """One manifest entry: where a checkpoint comes from and what it must hash to.

    `arch` names a preset architecture (``vit_b``, ``vit_l``, ``vit_h``, ``tiny``);
    `architecture`, when given, is the exact architecture and wins over the preset.
    `settings` are AMG settings recorded with a project-trained model (may be empty).
    """

    name: str
    filename: str
    url: str | None
    size: int | None
    sha256: str
    arch: str
    architecture: SamArchitecture | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    card: str | None = None
    source: str | None = None
    input_gsd_m: float | None = None
    """Metres of ground per model-input pixel in the imagery the model was trained on (None:
    not recorded, e.g. Meta's models, trained on imagery of every scale)."""


def engine_settings(settings: dict[str, Any], *, validate: bool = False) -> dict[str, Any]:
    """A manifest entry's recorded settings as engine sections (``{"amg": {...}, "rounds":
    {...}}``): entries hold either AMG settings alone (flat, as Meta-style tuning records
    them) or sections of `EngineConfig` (a model whose method settings were tuned too).
    `validate` raises pydantic's ValidationError when they do not fit."""
    sectioned = bool(settings) and set(settings) <= set(EngineConfig.model_fields)
    sections = dict(settings) if sectioned else {"amg": dict(settings)}
    if validate:
        EngineConfig.model_validate(sections)
        AmgSettings.model_validate(sections.get("amg", {}))
    return sections


@dataclass(frozen=True)
class ClassifierSpec:
    """The field / non-field classifier used when a run names none: a file committed next to
    the manifest, pinned by size and sha256."""

    filename: str
    size: int
    sha256: str
    card: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Manifest:
    """The checkpoints lisegagr can load by name, the model used when none is configured, and
    the default field classifier (None until one is shipped)."""

    entries: dict[str, CheckpointSpec]
    default: str
    classifier: ClassifierSpec | None = None

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read and validate a manifest file; any problem is a WeightsError naming the file."""
        shown = display_path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise WeightsError(f"{shown} does not exist; it lists the SAM checkpoints") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightsError(f"{shown} is not a readable JSON manifest ({err})") from err
        if not isinstance(raw, dict):
            raise WeightsError(f"{shown} must hold a JSON object with 'default' and 'checkpoints'")
        unknown = sorted(set(raw) - _MANIFEST_KEYS)
        if unknown:
            raise WeightsError(f"{shown} has unknown top-level keys {unknown}")
        checkpoints = raw.get("checkpoints")
        if not isinstance(checkpoints, dict):
            raise WeightsError(f"{shown} needs a 'checkpoints' object keyed by model name")
        entries = {name: _spec_from_json(name, entry, shown) for name, entry in checkpoints.items()}
        if TINY_MODEL_NAME in entries:
            raise WeightsError(f"{shown} may not define '{TINY_MODEL_NAME}', a built-in model")
        default = raw.get("default")
        if not isinstance(default, str) or (default != TINY_MODEL_NAME and default not in entries):
            choices = [TINY_MODEL_NAME, *entries]
            raise WeightsError(f"{shown} names default model {default!r}, not one of {choices}")
        classifier = _classifier_from_json(raw.get("classifier"), shown)
        return cls(entries=entries, default=default, classifier=classifier)

    def find_by_sha256(self, sha256: str) -> CheckpointSpec | None:
        """The entry whose checkpoint hashes to `sha256`, if any."""
        for spec in self.entries.values():
            if spec.sha256 == sha256:
                return spec
        return None


@dataclass(frozen=True)
class CheckpointStatus:
    """A manifest checkpoint as found in a weights folder.

    `size` is the file's size in bytes (None when absent); `verified` is None unless the
    listing was asked to hash the files.
    """

    name: str
    path: Path
    present: bool
    verified: bool | None
    size: int | None


def _classifier_from_json(raw: Any, shown: str) -> ClassifierSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not {"filename", "size", "sha256"} <= set(raw):
        raise WeightsError(f"{shown}: 'classifier' needs filename, size and sha256")
    unknown = sorted(set(raw) - _CLASSIFIER_KEYS)
    if unknown:
        raise WeightsError(f"{shown}: 'classifier' has unknown keys {unknown}")
    sha256 = raw["sha256"]
    if not isinstance(sha256, str) or not _SHA256_PATTERN.fullmatch(sha256):
        raise WeightsError(f"{shown}: the classifier's sha256 must be 64 lowercase hex digits")
    if not isinstance(raw["size"], int) or raw["size"] <= 0:
        raise WeightsError(f"{shown}: the classifier's size must be a positive integer")
    return ClassifierSpec(
        filename=str(raw["filename"]),
        size=raw["size"],
        sha256=sha256,
        card=raw.get("card"),
        source=raw.get("source"),
    )


def choose_model(requested: str | None, weights_dir: Path, manifest: Manifest) -> str:
    """The model a command or flow uses: `requested` when given; else Meta's ``vit_b`` when
    `manifest` lists it and its checkpoint is in `weights_dir`; else the manifest's default.

    Only looks for the file; `models.load_sam` verifies it when it is loaded.
    """
    if requested:
        return requested
    vit_b = manifest.entries.get("vit_b")
    if vit_b is not None and (weights_dir / vit_b.filename).exists():
        return "vit_b"
    return manifest.default


def default_classifier(weights_dir: Path, manifest: Manifest | None = None) -> Path | None:
    """The manifest's default classifier file, checked against its size and sha256; None when
    the manifest names none. A missing or altered file raises WeightsError with the fix."""
    manifest = manifest if manifest is not None else Manifest.load(weights_dir / "manifest.json")
    spec = manifest.classifier
    if spec is None:
        return None
    path = weights_dir / spec.filename
    shown = display_path(path)
    fix = (
        "restore it from the project repository (`git checkout -- weights/`), "
        "pass --classifier PATH, or run with --no-classifier"
    )
    if not path.is_file():
        raise WeightsError(f"{shown}, the default classifier, is missing; {fix}")
    if path.stat().st_size != spec.size or sha256_file(path) != spec.sha256:
        raise WeightsError(
            f"{shown}, the default classifier, does not match the sha256 in the manifest; {fix}"
        )
    return path


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(resolved)


def human_size(size: int) -> str:
    """Bytes in decimal units, as downloads are usually quoted: 375042383 → '375 MB'."""
    if size >= 10**9:
        return f"{size / 10**9:.1f} GB"
    if size >= 10**6:
        return f"{size / 10**6:.0f} MB"
    if size >= 10**3:
        return f"{size / 10**3:.0f} kB"
    return f"{size} B"


def fetch_hint(spec: CheckpointSpec) -> str:
    """How a user gets the checkpoint of `spec`, as the end of an error sentence."""
    if spec.url is None:
        return (
            "it has no download URL, so restore it from the project repository "
            "(it is committed under weights/) or pass --model PATH"
        )
    size = f" ({human_size(spec.size)})" if spec.size is not None else ""
    return f"run `lisegagr weights fetch {spec.name}`{size} or pass --model PATH"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at `path`, read `chunk` bytes at a time: once per process for
    a file of the same size and modification time (a worker checks and loads a checkpoint of
    gigabytes with one read)."""
    stat = path.stat()
    key = (str(path.absolute()), stat.st_size, stat.st_mtime_ns)
    with _HASHED_LOCK:
        if key not in _HASHED:
            digest = hashlib.sha256()
            with path.open("rb") as stream:
                while block := stream.read(chunk):
                    digest.update(block)
            _HASHED[key] = digest.hexdigest()
        return _HASHED[key]


_HASHED: dict[tuple[str, int, int], str] = {}
_HASHED_LOCK = threading.Lock()


def verify_checkpoint(spec: CheckpointSpec, path: Path) -> None:
    """Raise WeightsError unless `path` exists with the size and sha256 that `spec` pins."""
    shown = display_path(path)
    if not path.is_file():
        raise WeightsError(f"{shown} is missing; {fetch_hint(spec)}")
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise WeightsError(
            f"{shown} is {size} bytes but the manifest expects {spec.size} for {spec.name}; "
            f"delete it and {fetch_hint(spec)}"
        )
    sha256 = sha256_file(path)
    if sha256 != spec.sha256:
        raise WeightsError(
            f"{shown} has sha256 {sha256} but the manifest expects {spec.sha256} for "
            f"{spec.name}; delete it and {fetch_hint(spec)}"
        )


def list_checkpoints(
    manifest: Manifest, weights_dir: Path, *, verify: bool = False
) -> list[CheckpointStatus]:
    """Each manifest checkpoint and whether it is in `weights_dir`.

    Hashing is opt-in (`verify=True`): it reads every present file, seconds for vit_h.
    """
    statuses = []
    for spec in manifest.entries.values():
        path = weights_dir / spec.filename
        present = path.is_file()
        verified: bool | None = None
        if verify and present:
            try:
                verify_checkpoint(spec, path)
                verified = True
            except WeightsError as err:
                log.warning("%s", err)
                verified = False
        size = path.stat().st_size if present else None
        statuses.append(CheckpointStatus(spec.name, path, present, verified, size))
    return statuses


def _spec_from_json(name: str, entry: object, shown: str) -> CheckpointSpec:
    """One validated manifest entry; `shown` is the manifest's path for error messages."""
    where = f"{shown} entry {name!r}"
    if not isinstance(entry, dict):
        raise WeightsError(f"{where} must be a JSON object")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise WeightsError(f"{where} has unknown keys {unknown}")
    missing = sorted({"arch", "url", "filename", "sha256"} - set(entry))
    if missing:
        raise WeightsError(f"{where} lacks {missing}")
    arch, url, filename, sha256 = entry["arch"], entry["url"], entry["filename"], entry["sha256"]
    size = entry.get("size")
    settings = entry.get("settings", {})
    card = entry.get("card")
    source = entry.get("source")
    if not isinstance(filename, str) or not filename or Path(filename).name != filename:
        raise WeightsError(f"{where} needs a bare 'filename' inside the weights folder")
    if not (url is None or (isinstance(url, str) and url.startswith(("https://", "http://")))):
        raise WeightsError(f"{where} needs an http(s) 'url' or null")
    if not isinstance(sha256, str) or not _SHA256_PATTERN.fullmatch(sha256):
        raise WeightsError(f"{where} needs a 'sha256' of 64 lowercase hex digits")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise WeightsError(f"{where} needs a positive integer 'size' in bytes or null")
    if not isinstance(settings, dict):
        raise WeightsError(f"{where} needs 'settings' as an object of AMG settings")
    try:
        engine_settings(settings, validate=True)
    except ValidationError as err:
        problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise WeightsError(f"{where} has invalid settings ({problem})") from err
    input_gsd_m = entry.get("input_gsd_m")
    if input_gsd_m is not None and (
        isinstance(input_gsd_m, bool)
        or not isinstance(input_gsd_m, int | float)
        or input_gsd_m <= 0
    ):
        raise WeightsError(f"{where} needs 'input_gsd_m' as a positive number of metres or null")
    for key, value in (("card", card), ("source", source)):
        if value is not None and not isinstance(value, str):
            raise WeightsError(f"{where} needs '{key}' as a string or null")
    architecture = None
    if "architecture" in entry:
        if not isinstance(entry["architecture"], dict):
            raise WeightsError(f"{where} needs 'architecture' as an object")
        try:
            architecture = SamArchitecture.from_dict(entry["architecture"])
        except ValueError as err:
            raise WeightsError(f"{where} has an invalid architecture ({err})") from err
    if not isinstance(arch, str) or (architecture is None and arch not in ARCHITECTURES):
        raise WeightsError(
            f"{where} needs 'arch' naming one of {sorted(ARCHITECTURES)}, "
            "or an 'architecture' object"
        )
    return CheckpointSpec(
        name=name,
        filename=filename,
        url=url,
        size=size,
        sha256=sha256,
        arch=arch,
        architecture=architecture,
        settings=settings,
        card=card,
        source=source,
        input_gsd_m=float(input_gsd_m) if input_gsd_m is not None else None,
    )
