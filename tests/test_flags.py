"""One flag vocabulary: `-o/--out` is where every writing command's output goes, the spellings
it replaced still work (hidden, with a note), `-c/--config` takes one file shape, and the README
says what `--help` says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import typer
from typer.testing import CliRunner

from lisegagr.cli import app

runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "README.md"

#: Every command that writes: (its words, the arguments it needs besides -o, the name of the
#: -o parameter, the spellings -o replaced).
WRITERS: dict[str, tuple[list[str], str, list[str]]] = {
    "run": (["a.tif"], "output", []),
    "serve": (["/data/"], "output", []),
    "segment": (["a.png"], "output", ["--output"]),
    "demo": ([], "output", ["--output"]),
    "eval": (["pred.tif", "truth.tif"], "output", ["--output"]),
    "export": (["run-out"], "destination", ["--to"]),
    "preview": (["run-out"], "image", ["--image"]),
    "model train": (["data/"], "output", ["--output"]),
    "model evaluate": (["lisegagr-fields-v2", "data/"], "results_dir", ["--results-dir"]),
    "classifier build-dataset": (["fields.gpkg"], "output", ["--output"]),
    "classifier train": (["crops/"], "output", ["--output"]),
    "classifier eval": (["classifier.pt", "crops/"], "json_path", ["--json"]),
}


def _command(words: str) -> Any:
    command: Any = typer.main.get_command(app)
    for word in words.split():
        command = command.get_command(command.context_class(command), word)
    return command


def _parsed(words: str, args: list[str]) -> dict[str, Any]:
    command = _command(words)
    with command.make_context(command.name, list(args)) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize("words", list(WRITERS))
def test_every_writing_command_takes_o_and_out_for_its_output(words: str) -> None:
    needs, name, _ = WRITERS[words]
    assert str(_parsed(words, [*needs, "-o", "there"])[name]) == "there"
    assert str(_parsed(words, [*needs, "--out", "there"])[name]) == "there"
    assert str(_parsed(words, [*needs, "--out=there"])[name]) == "there"
    shown = runner.invoke(app, [*words.split(), "--help"], terminal_width=200).output
    assert re.search(r"^\s+-o, --out <\w+>", shown, re.M), shown


@pytest.mark.parametrize(
    ("words", "old"), [(w, old) for w, (_, _, olds) in WRITERS.items() for old in olds]
)
def test_the_old_spellings_still_work_hidden_with_a_note(
    words: str, old: str, capsys: pytest.CaptureFixture[str]
) -> None:
    needs, name, _ = WRITERS[words]
    assert str(_parsed(words, [*needs, old, "there"])[name]) == "there"
    assert str(_parsed(words, [*needs, f"{old}=there"])[name]) == "there"
    note = " ".join(capsys.readouterr().err.split())
    assert f"{old} is now -o/--out; {old} goes in a later release." in note
    shown = runner.invoke(app, [*words.split(), "--help"], terminal_width=200).output
    assert old not in shown
    # after `--`, a word spelled like an old option is an argument, left as it is
    if words == "segment":
        params = _parsed(words, ["-o", "there", "--", old])
        assert params["images"] == [Path(old)] and str(params["output"]) == "there"


def test_an_old_spelling_writes_where_it_says(tmp_path: Path) -> None:
    """`eval --output DIR` (the spelling before -o/--out) still writes its report in DIR."""
    labels = np.zeros((64, 64), np.uint32)
    labels[8:40, 8:40] = 1
    for name in ("pred.tif", "truth.tif"):
        with rasterio.open(
            tmp_path / name, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint32"
        ) as dst:
            dst.write(labels, 1)
    for flag, folder in (("--output", "old"), ("-o", "new")):
        args = ["eval", str(tmp_path / "pred.tif"), str(tmp_path / "truth.tif")]
        result = runner.invoke(app, [*args, flag, str(tmp_path / folder)])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / folder / "eval.json").read_text())


def test_the_readme_names_what_help_says() -> None:
    """The README's paragraph on -o/--out names every writing command and every old spelling,
    and the top-level help and the Makefile's demo use the new one."""
    paragraph = README.read_text().split("Every command that writes takes", 1)[1]
    paragraph = paragraph.split("\n\n", 1)[0]
    for words, (_, _, olds) in WRITERS.items():
        assert f"`{words}`" in " ".join(paragraph.split()), words
        for old in olds:
            assert f"{old}`" in paragraph, old
    top = " ".join(runner.invoke(app, ["--help"], terminal_width=200).output.split())
    assert "Every command that writes takes -o/--out" in top
    makefile = (README.parent / "Makefile").read_text()
    assert "lisegagr demo --out demo-out" in makefile


def test_config_help_says_which_section_each_command_reads() -> None:
    def help_of(words: str) -> str:
        shown = runner.invoke(app, [*words.split(), "--help"], terminal_width=300).output
        return " ".join(shown.split())

    for words in ("run", "serve"):
        assert "engine settings under engine:" in help_of(words), words
    for words in ("segment", "classifier build-dataset"):
        assert "reads its engine: section" in help_of(words), words
    assert "training settings" in help_of("model train")


TINY = ["--model", "tiny", "--device", "cpu", "--points-per-side", "4", "--working-size", "128"]


@pytest.fixture
def png(tmp_path: Path) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    image = np.clip(60 + rng.normal(0, 8, (96, 96, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "field.png"), image)
    return tmp_path / "field.png"


def test_segment_reads_the_engine_section_of_a_run_file(tmp_path: Path, png: Path) -> None:
    config = tmp_path / "region.yaml"
    config.write_text(
        "bands: [1, 2, 3]\nupscale: 2\n"
        "engine: {amg: {pred_iou_thresh: 0.0, stability_score_thresh: 0.25}}\n"
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(png), "-o", str(out), "-c", str(config), *TINY])
    assert result.exit_code == 0, result.output
    amg = json.loads((out / "run.json").read_text())["config"]["amg"]
    assert (amg["pred_iou_thresh"], amg["stability_score_thresh"]) == (0.0, 0.25)
    assert amg["points_per_side"] == 4  # the command line still wins over the file


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "bands: [1, 2, 3]\namg: {points_per_side: 8}\n",
            "amg at the top of a file laid out for `run` (region settings at the top); "
            "engine settings go under engine:.",
        ),
        (
            "upscale: 2\nengine: {amg: {pred_iou_thresh: 2}}\n",
            "(its engine: section): invalid settings (amg.pred_iou_thresh",
        ),
    ],
)
def test_segment_refuses_a_run_file_it_cannot_use_in_one_sentence(
    tmp_path: Path, png: Path, text: str, expected: str
) -> None:
    config = tmp_path / "region.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(png), "-o", str(out), "-c", str(config), *TINY])
    shown = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"error: {config}" in shown and expected in shown, shown
    assert "Traceback" not in result.output and not list(out.glob("*.labels.tif"))
