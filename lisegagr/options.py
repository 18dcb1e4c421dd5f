"""What the `lisegagr` commands share: the consoles, common options, one-sentence errors and
progress bars for the core's progress callbacks.

Messages and errors go to `console` (stderr), results to `out` (stdout). A command ends with
``raise fail("one sentence naming the problem and the fix.")``: exit code 2, no traceback.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, ClassVar

import typer
import typer.core
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
#: `-o/--out` in every command that writes: where its output goes (the folder, or the file of
#: a command that writes one file). The spellings it replaced are `renamed_options`.
OUT = ("--out", "-o")
#: `-c/--config` of the commands that segment: the engine section of a `run` file, or a file of
#: engine settings alone. `run` and `serve` take the whole file (`RegionConfigOption`).
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML/JSON settings file; reads its engine: section (as written for `run`), or "
        "engine settings at the top.",
    ),
]
RegionConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML/JSON settings file: region settings (bands, upscale, core, ...) at the top, "
        "engine settings under engine: (the section `segment -c` reads).",
    ),
]
PointsOption = Annotated[
    int | None, typer.Option("--points-per-side", help="AMG point grid per side (paper: 32).")
]


class _RenamedOptions(typer.core.TyperCommand):
    """A command that still takes the spellings its options had before (`renamed`: old → new),
    for one release: hidden from `--help`, and a note on stderr when used."""

    renamed: ClassVar[dict[str, str]] = {}

    def parse_args(self, ctx: typer.core._click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _rename(args, self.renamed))


def _rename(args: list[str], renamed: dict[str, str]) -> list[str]:
    """`args` with old option names (``--to X``, ``--to=X``) replaced by their new ones."""
    result: list[str] = []
    noted: set[str] = set()
    for index, arg in enumerate(args):
        if arg == "--":  # what follows is arguments, never options
            return result + args[index:]
        name, equals, value = arg.partition("=")
        new = renamed.get(name)
        if new is not None:
            if name not in noted:
                noted.add(name)
                say("[yellow]note:[/]", f"{name} is now {new}; {name} goes in a later release.")
            arg = f"{new.split('/')[-1]}{equals}{value}"
        result.append(arg)
    return result


def renamed_options(**renamed: str) -> type[typer.core.TyperCommand]:
    """The command class of a command whose options were renamed: ``renamed_options(to="-o/--out")``
    keeps ``--to`` working (named with underscores for dashes, as in Python)."""
    old_to_new = {f"--{old.replace('_', '-')}": new for old, new in renamed.items()}
    return type("RenamedOptions", (_RenamedOptions,), {"renamed": old_to_new})


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


def progress_bars(
    detail: str = "status", *, elapsed: bool = True, remaining: bool = True, **options: Any
) -> Progress:
    """rich bars on stderr counting steps, images or tiles, one line per task: its description
    (bold), its bar and done / total, the time elapsed and the time left, then its `detail`
    field (given to ``add_task`` and ``update``, e.g. ``current="a.tif"``). `options` go to
    rich's `Progress` (e.g. ``redirect_stderr=False``)."""
    columns: list[ProgressColumn] = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    ]
    if elapsed:
        columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    columns.append(TextColumn(f"{{task.fields[{detail}]}}"))
    return Progress(*columns, console=console, **options)


def download_bars() -> Progress:
    """rich bars on stderr for downloads: the file, its bar, bytes, speed and time left."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class RichProgress:
    """A `lisegagr_core.progress.ProgressCallback` drawn as rich bars on stderr, one per task
    (`bars`: `progress_bars()` unless given; the task's status is its detail).

    with RichProgress() as progress:
        train_sam(dataset, output, config, progress=progress)
    """

    def __init__(self, bars: Progress | None = None) -> None:
        self._bars = bars if bars is not None else progress_bars()
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
