"""A run assembled once: what every way of starting a run does before its first tile.

    with claim_run(RunRequest(["scene.tif"], "out/")) as run:      # the default model
        manifest = run_pipeline(run, InProcessExecutor())

`lisegagr run` and `resume`, the Prefect flows (`region_flow`, `nightly_flow`) and
`run_region` all come through `claim_run`, in this order:

1. the configuration file's layout (engine settings at the top, as for `segment`, are refused
   with what to write instead);
2. the mask source: the model named (or the default) found, hashed and loaded, so a missing or
   wrong checkpoint is one sentence here, and the settings recorded with it;
3. the configuration: the model's settings, under the file, under the overrides; and the
   manifest's default classifier unless the run has one or is told not to classify;
4. the plan (`plan_run`: the sources opened, the grid, the tile hashes' inputs);
5. the output: writable, its lock claimed (exclusively: of two runs started at the same
   moment one is refused), and claimed for these sources (a folder holding the map of other
   sources is refused, or with `overwrite` cleared).

All of it happens before any server or cluster starts, and every problem is one sentence
(`LisegagrError`). The claim travels in the run (`RegionRun.claim`), so the pipeline keeps the
lock its assembler took, and the lock is released when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lisegagr_core.config import EngineConfig, RegionConfig, load_region_config
from lisegagr_core.errors import InputError
from lisegagr_core.rasters import absolute_sources
from lisegagr_core.run.lock import RunLock
from lisegagr_core.run.manifest import read_manifest
from lisegagr_core.run.plan import RegionRun, plan_run
from lisegagr_core.run.store import RegionPaths
from lisegagr_core.source_specs import MaskSourceSpec, SamSpec
from lisegagr_core.storage import check_writable, storage_errors
from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR, default_classifier


@dataclass(frozen=True)
class RunRequest:
    """What a user asks for, as every entry point takes it.

    config: a region configuration file (YAML/JSON), or None for the defaults; either way the
    model's recorded settings go under it and `overrides` (dotted keys) over it. A
    `RegionConfig` is taken as the run's whole configuration (a resumed run's, a notebook's):
    nothing is added to it but the overrides.
    source: a mask-source spec to use instead of a SAM (a stand-in, a resumed run's source);
    None: the SAM `model` (a name or a path; None: the default) from `weights_dir`.
    """

    sources: Sequence[str]
    out: str
    config: RegionConfig | str | Path | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    weights_dir: str | Path | None = None
    device: str | None = None
    source: MaskSourceSpec | None = None
    classify: bool = True
    overwrite: bool = False
    storage_options: Mapping[str, Any] | None = None
    output_options: Mapping[str, Any] | None = None


def assemble_run(request: RunRequest) -> RegionRun:
    """Steps 1 to 4 of the module's list: the planned run, its output not yet touched."""
    config_file = None if isinstance(request.config, RegionConfig) else request.config
    check_run_layout(Path(config_file) if config_file is not None else None)
    source, model_settings = request.source, dict[str, Any]()
    if source is None:
        source, model_settings = SamSpec.choose(request.model, request.weights_dir, request.device)
    if isinstance(request.config, RegionConfig):
        if request.overrides:
            raise ValueError(
                "overrides change a configuration file or the defaults, not a RegionConfig"
            )
        config = request.config
        if not request.classify:
            config = config.model_copy(update={"classifier": None})
    else:
        config = load_region_config(
            config_file, dict(request.overrides), model_settings=model_settings
        )
        config = with_default_classifier(config, request.weights_dir, enabled=request.classify)
    return plan_run(
        request.sources,
        request.out,
        config,
        source,
        storage_options=request.storage_options,
        output_options=request.output_options,
    )


@contextlib.contextmanager
def claim_run(request: RunRequest) -> Iterator[RegionRun]:
    """The assembled run, its output claimed for it (step 5) until the block ends."""
    run = assemble_run(request)
    paths = run.paths
    check_writable(paths.root, paths.storage_options)
    lock = RunLock(paths)
    with storage_errors(paths.root):
        claim = lock.acquire()
    try:
        with storage_errors(paths.root):
            claim_output(paths, run.sources, request.overwrite)
        yield dataclasses.replace(run, claim=claim)
    finally:
        lock.release()


def check_run_layout(config_path: Path | None) -> None:
    """Refuse a `segment`-style file (engine settings at the top) with what to write instead."""
    import yaml

    if config_path is None or not config_path.is_file():
        return  # load_region_config reports it
    try:
        data = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError:
        return
    if not isinstance(data, dict):
        return
    engine_only = set(EngineConfig.model_fields) - set(RegionConfig.model_fields)
    misplaced = [key for key in data if key in engine_only]
    if misplaced:
        nested = ", ".join(f"{key}: ..." for key in misplaced)
        what = "is an engine setting" if len(misplaced) == 1 else "are engine settings"
        raise InputError(
            f"{config_path}: {', '.join(misplaced)} {what}, at the top as for `segment`; "
            f"for `run` put {'it' if len(misplaced) == 1 else 'them'} under `engine:` "
            f"(engine: {{{nested}}})."
        )


def with_default_classifier(
    config: RegionConfig, weights_dir: str | Path | None, *, enabled: bool = True
) -> RegionConfig:
    """`config` with the manifest's default classifier when it names none; without one when
    not `enabled`. A shipped classifier that is missing or altered raises WeightsError."""
    if not enabled:
        return config.model_copy(update={"classifier": None})
    if config.classifier:
        return config
    path = default_classifier(Path(weights_dir) if weights_dir else DEFAULT_WEIGHTS_DIR)
    return config if path is None else config.model_copy(update={"classifier": str(path)})


def claim_output(paths: RegionPaths, sources: Sequence[str], overwrite: bool) -> None:
    """Refuse an output that holds the map of other sources (not all of them among
    `sources`: a grown region is the same map, extended), unless `overwrite`: then clear
    it (every output of a run, the exports written into it by default included:
    `RegionPaths.clear`), so nothing of the old map stays."""
    if not paths.exists(paths.manifest):
        return
    try:
        recorded = read_manifest(paths.root, dict(paths.storage_options)).sources
    except InputError as exc:
        if not overwrite:
            raise InputError(f"{exc} Or pass --overwrite to replace it.") from None
        recorded = []
    if recorded and set(absolute_sources(recorded)) <= set(absolute_sources(sources)):
        return  # the same region, or grown: a re-run or a resume reuses the cached tiles
    if not overwrite:
        raise InputError(
            f"{paths.root} holds the map of other sources ({', '.join(recorded)}); pass "
            "--overwrite to replace it, or choose another --out."
        )
    paths.clear()
