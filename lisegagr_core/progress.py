"""Progress of long core operations, reported through a callback the caller supplies.

The core never draws: a function that takes ``progress: ProgressCallback | None`` calls it
with a `ProgressUpdate` after each unit of work (a training step, a downloaded chunk, an
evaluated image), and the caller shows it however it likes; the CLI renders rich bars
(`lisegagr.options.RichProgress`). None reports nothing.

    def show(update: ProgressUpdate) -> None:
        print(f"{update.task}: {update.done}/{update.total} {update.status}")

    train_sam(dataset, output, config, progress=show)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressUpdate:
    """Where one task of an operation stands.

    `task` names what is counted ("training", "evaluating", "epoch 2/10", a file name); an
    operation may report several tasks one after another. `done` units of `total` are finished
    (`total` None when not known); `status` is a short line on the current state (a loss), or
    empty.
    """

    task: str
    done: int
    total: int | None
    status: str = ""


#: Called with each `ProgressUpdate`; must return quickly and not raise.
ProgressCallback = Callable[[ProgressUpdate], None]


def ignore_progress(update: ProgressUpdate) -> None:
    """A `ProgressCallback` that does nothing (for callers that pass None)."""
