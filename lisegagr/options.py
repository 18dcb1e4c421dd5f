"""What the `lisegagr` commands share: the consoles, common options, one-sentence errors and
progress bars for the core's progress callbacks.

Messages and errors go to `console` (stderr), results to `out` (stdout). A command ends with
``raise fail("one sentence naming the problem and the fix.")``: exit code 2, no traceback.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from lisegagr_core.progress import ProgressUpdate

console = Console(stderr=True)
out = Console()

WeightsDir = Annotated[
    Path,
    typer.Option(
        "--weights-dir",
        envvar="LISEGAGR_WEIGHTS_DIR",
        help="Where the manifest and the checkpoints are, and checkpoints are downloaded to.",
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="vit_b, vit_l, vit_h, tiny, a project model name, or a checkpoint PATH. "
        "Default: vit_b when its checkpoint is present, else the project's default model.",
    ),
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: CUDA if present).")
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML/JSON file of engine settings.")
]
PointsOption = Annotated[
    int | None, typer.Option("--points-per-side", help="AMG point grid per side (paper: 32).")
]


def say(prefix: str, message: str) -> None:
    """One message on stderr, never wrapped mid-sentence (tools and tests grep for it)."""
    console.print(f"{prefix} ", end="")
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    """Print `message` as an error; the exit (code 2) for the caller to raise."""
    say("[bold red]error:[/]", message)
    return typer.Exit(code=2)


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """`--bands 4,3,2` → (4, 3, 2); one band (grey) or three (R, G, B), else exit 2."""
    if text is None:
        return None
    try:
        chosen = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise fail(
            f"--bands takes 1-based band numbers separated by commas, not {text!r}."
        ) from None
    if len(chosen) not in (1, 3):
        raise fail(f"--bands takes one band (grey) or three (as R,G,B), not {text!r}.")
    return chosen


#: Columns of a bar counting steps, images or batches, with the task's status at the end.
COUNT_COLUMNS: tuple[ProgressColumn, ...] = (
    TextColumn("[bold]{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
    TimeRemainingColumn(),
    TextColumn("{task.fields[status]}"),
)
#: Columns of a download bar.
DOWNLOAD_COLUMNS: tuple[ProgressColumn, ...] = (
    TextColumn("{task.description}"),
    BarColumn(),
    DownloadColumn(),
    TransferSpeedColumn(),
    TimeRemainingColumn(),
)


class RichProgress:
    """A `lisegagr_core.progress.ProgressCallback` drawn as rich bars on stderr, one per task.

    with RichProgress() as progress:
        train_sam(dataset, output, config, progress=progress)
    """

    def __init__(self, columns: tuple[ProgressColumn, ...] = COUNT_COLUMNS) -> None:
        self._bars = Progress(*columns, console=console)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._bars.stop()

    def __call__(self, update: ProgressUpdate) -> None:
        task = self._tasks.get(update.task)
        if task is None:
            self._tasks[update.task] = self._bars.add_task(
                update.task, total=update.total, completed=update.done, status=update.status
            )
        else:
            self._bars.update(task, total=update.total, completed=update.done, status=update.status)
