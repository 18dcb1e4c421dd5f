"""The layers stay apart: the core draws nothing (rich is the CLI's), and importing a core
module loads only what it needs (no dask for the model and weights modules, no torch for the
weights manifest that the CLI reads at start-up). Each check imports in a fresh interpreter."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import lisegagr_core

REPO = Path(__file__).resolve().parents[1]
CORE_MODULES = sorted(
    info.name for info in pkgutil.walk_packages(lisegagr_core.__path__, prefix="lisegagr_core.")
)


def _loaded_after_importing(*modules: str) -> set[str]:
    """Top-level packages in sys.modules after a fresh interpreter imports `modules`."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return set(loaded)


def test_the_core_modules_are_found() -> None:
    assert {"lisegagr_core.weights", "lisegagr_core.models", "lisegagr_core.engine"} <= set(
        CORE_MODULES
    )
    assert "lisegagr_core.training.trainer" in CORE_MODULES


def test_no_core_module_imports_rich() -> None:
    assert "rich" not in _loaded_after_importing(*CORE_MODULES)


@pytest.mark.parametrize(
    "module", ["lisegagr_core.weights", "lisegagr_core.models", "lisegagr_core.engine"]
)
def test_the_model_modules_do_not_load_dask(module: str) -> None:
    assert "dask" not in _loaded_after_importing(module)


def test_the_weights_manifest_and_the_cli_start_without_torch() -> None:
    loaded = _loaded_after_importing("lisegagr_core.weights", "lisegagr.cli")
    assert not loaded & {"torch", "segment_anything", "dask"}
