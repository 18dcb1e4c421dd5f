from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

from lisegagr_core.architectures import TINY, VIT_B, VIT_H, VIT_L, SamArchitecture
from lisegagr_core.devices import resolve_device
from lisegagr_core.errors import InputError
from lisegagr_core.models import (
    build_sam,
    build_tiny_sam,
    clear_model_cache,
    infer_architecture,
    load_sam,
    model_description,
)
from lisegagr_core.weights import Manifest, WeightsError, sha256_file


@pytest.fixture(autouse=True)
def fresh_model_cache() -> Iterator[None]:
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TINY state dict (seed 3, so it differs from load_sam('tiny')) saved as a .pth file."""
    path = tmp_path_factory.mktemp("weights") / "tiny_seed3.pth"
    torch.save(build_tiny_sam(seed=3).state_dict(), path)
    return path


def _state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _amg_masks(model: torch.nn.Module, image: np.ndarray) -> list[np.ndarray]:
    generator = SamAutomaticMaskGenerator(
        model, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    with torch.inference_mode():
        return [record["segmentation"] for record in generator.generate(image)]


def test_tiny_sam_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)

    first = build_tiny_sam(seed=0).state_dict()
    second = build_tiny_sam(seed=0).state_dict()
    other_seed = build_tiny_sam(seed=1).state_dict()

    assert torch.equal(torch.rand(3), expected_next)
    assert _state_dicts_equal(first, second)
    assert not _state_dicts_equal(first, other_seed)
    assert first["image_encoder.pos_embed"].abs().sum() > 0


def test_tiny_sam_proposes_the_same_partial_masks_on_the_same_image() -> None:
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)

    first = _amg_masks(build_tiny_sam(seed=0), image)
    second = _amg_masks(build_tiny_sam(seed=0), image)

    assert sum(0 < mask.sum() < mask.size for mask in first) >= 3
    assert len(first) == len(second)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize(("name", "arch"), [("vit_b", VIT_B), ("vit_l", VIT_L), ("vit_h", VIT_H)])
def test_presets_match_segment_anything_registry(name: str, arch: SamArchitecture) -> None:
    with torch.device("meta"):
        ours = build_sam(arch).state_dict()
        theirs = sam_model_registry[name]().state_dict()

    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_architecture_round_trips_through_json() -> None:
    raw = json.loads(json.dumps(TINY.to_dict()))

    assert SamArchitecture.from_dict(raw) == TINY
    assert raw["encoder_global_attn_indexes"] == [1]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"decoder_num_heads": 3}, "decoder_num_heads must divide"),
        ({"prompt_embed_dim": 36}, "multiple of 8"),
        ({"encoder_global_attn_indexes": (2,)}, "must lie in"),
        ({"image_size": 250}, "vit_patch_size must divide"),
        ({"encoder_depth": 0}, "at least 1"),
    ],
)
def test_architecture_rejects_shapes_sam_cannot_build(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SamArchitecture.from_dict({**TINY.to_dict(), **change})


def test_load_tiny_by_name_is_cached_and_described() -> None:
    first = load_sam("tiny", device="cpu")
    second = load_sam("tiny", device="cpu")

    assert first is second
    assert first.checkpoint_sha256 == "tiny-seed-0"
    assert first.architecture == TINY
    assert not first.model.training
    assert model_description(first) == "tiny (random weights, for tests; not a trained model)"


def test_load_from_path_infers_tiny_architecture(tiny_checkpoint: Path) -> None:
    loaded = load_sam(str(tiny_checkpoint), device="cpu")

    assert loaded.architecture == TINY
    assert loaded.name == "tiny_seed3.pth"
    assert loaded.checkpoint_sha256 == sha256_file(tiny_checkpoint)
    assert loaded.device == torch.device("cpu")
    assert _state_dicts_equal(loaded.model.state_dict(), build_tiny_sam(seed=3).state_dict())
    assert load_sam(str(tiny_checkpoint), device="cpu") is loaded
    assert model_description(loaded).startswith("tiny_seed3.pth (tiny state dict from a file")


def test_fp16_state_dict_is_upcast_to_fp32(tmp_path: Path) -> None:
    path = tmp_path / "tiny_fp16.pt"
    torch.save(build_tiny_sam(seed=3).half().state_dict(), path)

    loaded = load_sam(str(path), device="cpu")

    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


def test_truncated_checkpoint_raises_weights_error(tmp_path: Path, tiny_checkpoint: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(tiny_checkpoint.read_bytes()[:5000])

    with pytest.raises(WeightsError, match=r"truncated\.pth is not a readable PyTorch checkpoint"):
        load_sam(str(path), device="cpu")


def test_state_dict_that_does_not_fit_raises_weights_error(tmp_path: Path) -> None:
    state = build_tiny_sam().state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    state["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 31)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)

    with pytest.raises(WeightsError) as raised:
        load_sam(str(path), device="cpu")

    assert str(raised.value).endswith(
        "wrong.pth does not fit the tiny architecture: "
        "1 missing keys (e.g. mask_decoder.iou_token.weight), "
        "1 unexpected keys (e.g. mask_decoder.extra.weight), "
        "1 wrong shapes (e.g. prompt_encoder.no_mask_embed.weight is [1, 31], not [1, 32])"
    )


def test_state_dict_of_unknown_architecture_raises_weights_error(tmp_path: Path) -> None:
    with torch.device("meta"):
        state = build_sam(SamArchitecture(96, 3, 2, (2,), image_size=256)).state_dict()

    with pytest.raises(WeightsError, match="96 wide with 3 blocks, which matches none of"):
        infer_architecture(state, tmp_path / "odd.pth")


@pytest.mark.parametrize("content", [[1, 2, 3], {"weight": "not a tensor"}])
def test_file_without_state_dict_raises_weights_error(tmp_path: Path, content: object) -> None:
    path = tmp_path / "other.pt"
    torch.save(content, path)

    with pytest.raises(WeightsError, match="does not hold a state dict"):
        load_sam(str(path), device="cpu")


def test_a_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("# not a model\n")

    with pytest.raises(WeightsError, match=r"notes.pt is not a PyTorch checkpoint"):
        load_sam(str(path), device="cpu")


class _RunsCodeWhenUnpickled:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("unpickling ran code",))


def test_checkpoint_with_pickled_objects_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "objects.pth"
    torch.save({"image_encoder.pos_embed": _RunsCodeWhenUnpickled()}, path)

    with pytest.raises(WeightsError, match="holds objects other than plain tensors"):
        load_sam(str(path), device="cpu")

    assert "unpickling ran code" not in capsys.readouterr().out


def test_missing_meta_checkpoint_says_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="lisegagr weights fetch vit_b"):
        load_sam("vit_b", weights_dir=tmp_path, device="cpu")


def test_unknown_model_name_lists_choices() -> None:
    with pytest.raises(WeightsError, match=r"'vit_q' is neither a model name \(tiny, vit_b"):
        load_sam("vit_q", device="cpu")


def _project_manifest(tmp_path: Path, checkpoint: Path, sha256: str) -> Manifest:
    entry = {
        "arch": "tiny",
        "url": None,
        "filename": checkpoint.name,
        "size": checkpoint.stat().st_size,
        "sha256": sha256,
        "architecture": TINY.to_dict(),
        "settings": {"points_per_side": 8, "pred_iou_thresh": 0.5},
        "card": "weights/fields-v1.md",
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"default": "fields-v1", "checkpoints": {"fields-v1": entry}}))
    return Manifest.load(path)


def test_project_model_loads_by_name_with_its_settings(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    manifest = _project_manifest(tmp_path, tiny_checkpoint, sha256_file(tiny_checkpoint))
    weights_dir = tiny_checkpoint.parent

    loaded = load_sam("fields-v1", weights_dir=weights_dir, manifest=manifest, device="cpu")

    again = load_sam("fields-v1", weights_dir=weights_dir, manifest=manifest, device="cpu")
    assert again is loaded
    assert loaded.settings == {"points_per_side": 8, "pred_iou_thresh": 0.5}
    assert loaded.origin == "project"
    assert model_description(loaded).startswith("fields-v1 (project-trained tiny, sha256 ")
    by_path = load_sam(str(tiny_checkpoint), manifest=manifest, device="cpu")
    assert by_path is loaded


def test_project_model_with_wrong_hash_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    manifest = _project_manifest(tmp_path, tiny_checkpoint, "0" * 64)

    with pytest.raises(WeightsError, match=r"tiny_seed3\.pth has sha256 .* expects 0{64}"):
        load_sam("fields-v1", weights_dir=tiny_checkpoint.parent, manifest=manifest)


def test_resolve_device_honours_cpu_and_defaults_sensibly() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_resolve_device_refuses_cuda_without_a_gpu() -> None:
    with pytest.raises(InputError, match="no CUDA GPU is available"):
        resolve_device("cuda:1")


def test_resolve_device_refuses_nonsense() -> None:
    with pytest.raises(InputError, match="'gpu please' is not a device"):
        resolve_device("gpu please")


def test_a_model_named_in_another_weights_folder_loads_from_that_folders_manifest(
    tmp_path: Path,
) -> None:
    from affine import Affine

    from lisegagr_core.config import AmgSettings
    from lisegagr_core.source_specs import SamSpec
    from lisegagr_core.training import register_model

    (tmp_path / "manifest.json").write_text(
        json.dumps({"description": "x", "default": "tiny", "checkpoints": {}})
    )
    torch.save(build_tiny_sam().state_dict(), tmp_path / "mine.pt")
    register_model(tmp_path / "manifest.json", tmp_path / "mine.pt", TINY, make_default=True)
    clear_model_cache()
    # As a Dask worker does: only the name and the folder travel.
    loaded = load_sam("mine", weights_dir=tmp_path, device="cpu")
    assert loaded.name == "mine" and loaded.origin == "project"
    clear_model_cache()
    spec = SamSpec("mine", str(tmp_path), loaded.checkpoint_sha256, "mine", "cpu")
    source = spec.build(None, AmgSettings(), Affine.identity())  # type: ignore[arg-type]
    assert source.sam.name == "mine"
