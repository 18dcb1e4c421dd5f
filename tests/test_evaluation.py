"""`lisegagr eval`: hand-computed cases, stages, polygon ground truth, real NAIP pipeline output."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from affine import Affine
from typer.testing import CliRunner

from lisegagr.cli import app
from lisegagr_core.config import EngineConfig, RefineSettings, RegionConfig
from lisegagr_core.errors import InputError
from lisegagr_core.evaluation import (
    FALSE,
    MATCHED,
    MERGED,
    MISSED,
    error_categories,
    evaluate,
    stage_rank,
)
from lisegagr_core.image_outputs import write_instance_table, write_label_raster
from lisegagr_core.predictions import read_predictions, read_truth
from lisegagr_core.single_image import segment_file
from lisegagr_core.standins.ground_truth import GroundTruthMaskSource

from .naip import naip_names, naip_polygons, naip_scene

runner = CliRunner()
ORIGIN = Affine(1.0, 0.0, 400_000.0, 0.0, -1.0, 4_400_000.0)


def _four_fields() -> np.ndarray:
    """40 × 80 px: fields 1 | 2 on top, 3 | 4 below, 20 × 40 px each."""
    truth = np.zeros((40, 80), np.uint32)
    truth[:20, :40], truth[:20, 40:], truth[20:, :40], truth[20:, 40:] = 1, 2, 3, 4
    return truth


def _missed(truth: np.ndarray) -> np.ndarray:
    return np.where(truth == 4, 0, truth * 10).astype(np.uint32)


def _merged(truth: np.ndarray) -> np.ndarray:
    return np.where(truth == 2, 1, truth).astype(np.uint32)


def _split(truth: np.ndarray) -> np.ndarray:
    predicted = truth.copy()
    predicted[:20, 13:26], predicted[:20, 26:40] = 7, 8  # field 1 in thirds: 13, 13, 14 px
    return predicted


CASES = {
    # name: (prediction, precision, recall, pixel IoU, matched, merged, split)
    "perfect": (lambda t: t * 3, 1.0, 1.0, 1.0, 4, 0, 0),
    "missed": (_missed, 1.0, 0.75, 0.75, 3, 0, 0),
    # the merged instance has IoU exactly 0.5 with each of its fields: one of them matches
    "merged": (_merged, 1.0, 0.75, 1.0, 3, 1, 0),
    "split": (_split, 0.5, 0.75, 1.0, 3, 0, 1),
}


@pytest.mark.parametrize("case", CASES)
def test_eval_of_hand_computed_cases(tmp_path: Path, case: str) -> None:
    make, precision, recall, pixel_iou, matched, merged, split = CASES[case]
    truth = _four_fields()
    write_label_raster(tmp_path / "truth.tif", truth)
    write_label_raster(tmp_path / "pred.tif", make(truth))
    result = runner.invoke(
        app, ["eval", str(tmp_path / "pred.tif"), str(tmp_path / "truth.tif"), "-o", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    pooled = json.loads((tmp_path / "eval.json").read_text())["pooled"]
    assert pooled["precision"] == pytest.approx(precision)
    assert pooled["recall"] == pytest.approx(recall)
    assert pooled["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert pooled["pixel_iou"] == pytest.approx(pixel_iou)
    assert (pooled["matched"], pooled["merged_fields"], pooled["split_fields"]) == (
        matched,
        merged,
        split,
    )
    picture = cv2.imread(str(tmp_path / "pred.eval.png"))
    assert picture.shape == (40, 80, 3)


def test_error_picture_colours_missed_false_and_merged_fields() -> None:
    truth = _four_fields()
    predicted = _merged(truth)
    predicted[20:, 40:] = 0  # field 4 is missed ...
    predicted[30:, 50:60] = 9  # ... but for a piece of it, a false instance
    categories = error_categories(truth, predicted)
    assert categories[5, 5] == categories[5, 60] == MERGED
    assert categories[25, 5] == MATCHED
    assert categories[25, 60] == MISSED and categories[35, 55] == MISSED  # missed over false
    assert error_categories(np.zeros_like(truth), truth)[0, 0] == FALSE


def _segment_output(folder: Path) -> Path:
    """A `lisegagr segment` output by hand: labels, and a table of the stage of each id."""
    folder.mkdir()
    write_label_raster(folder / "scene.labels.tif", _four_fields())
    stages = {1: "round 1", 2: "round 1", 3: "round 2", 4: "refinement"}
    write_instance_table(
        folder / "scene.instances.csv",
        [{"id": i, "stage": stage} for i, stage in stages.items()],
        ["id", "stage"],
    )
    return folder


def test_scores_after_each_recorded_stage(tmp_path: Path) -> None:
    output = _segment_output(tmp_path / "out")
    write_label_raster(tmp_path / "truth.tif", _four_fields())
    report = evaluate(output, tmp_path / "truth.tif", tmp_path / "eval")
    recalls = {label: scores.recall for label, scores in report.pooled_stages.items()}
    assert recalls == {"after round 1": 0.5, "after round 2": 0.75, "after refinement": 1.0}
    assert report.images[0].stages["after round 1"].scores.pixel_iou == 0.5
    assert stage_rank("round 3") < stage_rank("refinement")


def test_via_polygons_of_the_image_of_the_same_name(tmp_path: Path) -> None:
    output = _segment_output(tmp_path / "out")
    squares = [(0, 0), (40, 0), (0, 20), (40, 20)]
    regions = [
        {
            "shape_attributes": {
                "name": "polygon",
                "all_points_x": [x, x + 40, x + 40, x],
                "all_points_y": [y, y, y + 20, y + 20],
            },
            "region_attributes": {},
        }
        for x, y in squares
    ]
    via = {
        "other.png": {"filename": "other.png", "regions": []},
        "scene.png": {"filename": "scene.png", "regions": regions},
    }
    (tmp_path / "truth.json").write_text(json.dumps(via))
    result = runner.invoke(app, ["eval", str(output), str(tmp_path / "truth.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((output / "eval" / "eval.json").read_text())
    assert report["pooled"]["f1"] == 1.0 and report["pooled"]["true_fields"] == 4
    via["a.png"] = {"filename": "a.png", "regions": regions}
    del via["scene.png"]
    (tmp_path / "wrong.json").write_text(json.dumps(via))
    result = runner.invoke(app, ["eval", str(output), str(tmp_path / "wrong.json")])
    assert result.exit_code == 2 and "has no polygons for the image scene" in result.output


def test_map_polygons_go_through_the_prediction_georeference(tmp_path: Path) -> None:
    truth = _four_fields()
    write_label_raster(tmp_path / "pred.tif", truth, crs="EPSG:32616", transform=ORIGIN)
    features = []
    for x, y in [(0, 0), (40, 0), (0, 20), (40, 20)]:
        ring = [ORIGIN @ corner for corner in [(x, y), (x + 40, y), (x + 40, y + 20), (x, y + 20)]]
        features.append(
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
            }
        )
    collection = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:32616"}},
        "features": features,
    }
    (tmp_path / "fields.geojson").write_text(json.dumps(collection))
    report = evaluate(tmp_path / "pred.tif", tmp_path / "fields.geojson")
    assert report.pooled.f1 == 1.0 and report.pooled.pixel_iou == 1.0
    write_label_raster(tmp_path / "plain.tif", truth)
    with pytest.raises(InputError, match=r"holds map coordinates, but .*plain\.tif has no"):
        evaluate(tmp_path / "plain.tif", tmp_path / "fields.geojson")


def test_truth_raster_of_another_size_is_refused(tmp_path: Path) -> None:
    write_label_raster(tmp_path / "pred.tif", _four_fields())
    write_label_raster(tmp_path / "truth.tif", np.zeros((10, 10), np.uint32))
    result = runner.invoke(app, ["eval", str(tmp_path / "pred.tif"), str(tmp_path / "truth.tif")])
    assert result.exit_code == 2
    assert "truth.tif is 10×10 px but the prediction" in result.output
    result = runner.invoke(app, ["eval", str(tmp_path), str(tmp_path / "truth.tif")])
    assert result.exit_code == 2 and "neither a `lisegagr segment` output" in result.output


@pytest.mark.slow
@pytest.mark.shared_data
def test_eval_of_ground_truth_driven_segment_output_on_naip(
    shared_data: Path, tmp_path: Path
) -> None:
    """Round 1 misses a third of the fields; round 2 finds them: eval sees both stages."""
    config = EngineConfig(working_size=None, refine=RefineSettings(enabled=False))
    names = naip_names(shared_data)[:2]
    for index, name in enumerate(names):
        _, truth = naip_scene(shared_data, name)
        source = GroundTruthMaskSource(truth, miss_fractions=[1 / 3], seed=index)
        image = shared_data / "agoro-naip" / "images" / name
        segment_file(image, source, config, tmp_path / "out")
    annotations = shared_data / "agoro-naip" / "annotations.json"
    result = runner.invoke(app, ["eval", str(tmp_path / "out"), str(annotations)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "eval" / "eval.json").read_text())
    stages = report["pooled_stages"]
    assert stages["after round 1"]["recall"] == pytest.approx(2 / 3, abs=0.08)
    assert stages["after round 2"]["recall"] > stages["after round 1"]["recall"] + 0.15
    assert report["pooled"]["f1"] > 0.85 and report["pooled"]["pixel_iou"] > 0.9
    fields = sum(len(naip_polygons(shared_data)[name]) for name in names)
    assert report["pooled"]["true_fields"] >= fields - 5  # a few polygons hide under others
    for image in report["images"]:
        assert Path(image["picture"]).stat().st_size > 0


@pytest.mark.slow
@pytest.mark.shared_data
def test_eval_of_a_region_run_against_map_polygons(shared_data: Path, tmp_path: Path) -> None:
    """A `run` output (mosaic.zarr + fields.parquet) scored against GeoJSON in map units."""
    import rasterio

    from lisegagr_core.run import run_region

    from .flow_helpers import truth_spec

    name = naip_names(shared_data)[3]
    rgb, truth = naip_scene(shared_data, name)
    raster = tmp_path / "naip.tif"
    with rasterio.open(
        raster,
        "w",
        driver="GTiff",
        width=rgb.shape[1],
        height=rgb.shape[0],
        count=3,
        dtype="uint8",
        crs="EPSG:32616",
        transform=ORIGIN,
    ) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    config = RegionConfig(
        core=512, halo=32, engine={"refine": {"enabled": False}, "rounds": {"max_rounds": 2}}
    )
    run_region([str(raster)], str(tmp_path / "run"), config, truth_spec(raster, truth))
    features = [
        {
            "type": "Feature",
            "properties": {"label": "1"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[ORIGIN @ xy for xy in item.polygon.exterior.coords]],
            },
        }
        for item in naip_polygons(shared_data)[name]
    ]
    geojson = tmp_path / "fields.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    report = evaluate(tmp_path / "run", geojson, tmp_path / "eval")
    assert report.pooled.f1 > 0.85 and report.pooled.pixel_iou > 0.9
    assert "after round 1" in report.pooled_stages
    assert (tmp_path / "eval" / "run.eval.png").stat().st_size > 0
    (prediction,) = read_predictions(tmp_path / "run")
    assert prediction.transform == ORIGIN and prediction.image_path == str(raster)
    assert read_truth(geojson, prediction).max() == len(features)
