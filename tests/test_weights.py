from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lisegagr_core.architectures import TINY
from lisegagr_core.downloads import fetch_checkpoint
from lisegagr_core.progress import ProgressUpdate
from lisegagr_core.weights import (
    DEFAULT_MANIFEST_PATH,
    CheckpointSpec,
    Manifest,
    WeightsError,
    choose_model,
    list_checkpoints,
    sha256_file,
    verify_checkpoint,
)

CHECKPOINT_BYTES = hashlib.sha256(b"seed").digest() * 9000  # 288 kB, several read chunks
CHECKPOINT_SHA256 = hashlib.sha256(CHECKPOINT_BYTES).hexdigest()


@dataclass
class CheckpointServer:
    """A local HTTP server with one checkpoint at /sam_test.pth, counting requests."""

    base_url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[CheckpointServer]:
    state = CheckpointServer(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if self.path != "/sam_test.pth":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(CHECKPOINT_BYTES)))
            self.end_headers()
            self.wfile.write(CHECKPOINT_BYTES)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _write_manifest(path: Path, checkpoints: dict[str, Any], default: str = "tiny") -> Path:
    path.write_text(json.dumps({"default": default, "checkpoints": checkpoints}))
    return path


def _entry(url: str | None, sha256: str = CHECKPOINT_SHA256, **extra: Any) -> dict[str, Any]:
    return {
        "arch": "vit_b",
        "url": url,
        "filename": "sam_test.pth",
        "size": len(CHECKPOINT_BYTES),
        "sha256": sha256,
        **extra,
    }


def _spec(tmp_path: Path, url: str | None, sha256: str = CHECKPOINT_SHA256) -> CheckpointSpec:
    manifest_path = _write_manifest(tmp_path / "manifest.json", {"test": _entry(url, sha256)})
    return Manifest.load(manifest_path).entries["test"]


def test_fetch_places_verified_checkpoint_in_weights_dir(
    tmp_path: Path, server: CheckpointServer
) -> None:
    spec = _spec(tmp_path, f"{server.base_url}/sam_test.pth")
    weights_dir = tmp_path / "weights"
    updates: list[ProgressUpdate] = []

    path = fetch_checkpoint(spec, weights_dir, progress=updates.append)

    assert path == weights_dir / "sam_test.pth"
    assert sha256_file(path) == CHECKPOINT_SHA256
    size = len(CHECKPOINT_BYTES)
    assert updates[0] == ProgressUpdate("sam_test.pth", 0, size)
    assert updates[-1] == ProgressUpdate("sam_test.pth", size, size)
    assert len(updates) >= 2 and [u.done for u in updates] == sorted(u.done for u in updates)
    assert sorted(p.name for p in weights_dir.iterdir()) == ["sam_test.pth"]
    verify_checkpoint(spec, path)


def test_fetch_with_wrong_hash_raises_and_leaves_no_file(
    tmp_path: Path, server: CheckpointServer
) -> None:
    spec = _spec(tmp_path, f"{server.base_url}/sam_test.pth", sha256="0" * 64)
    weights_dir = tmp_path / "weights"

    with pytest.raises(WeightsError, match=r"expects 0{64}") as raised:
        fetch_checkpoint(spec, weights_dir)

    assert CHECKPOINT_SHA256 in str(raised.value)
    assert list(weights_dir.iterdir()) == []


def test_fetch_with_wrong_size_raises_and_leaves_no_file(
    tmp_path: Path, server: CheckpointServer
) -> None:
    entry = _entry(f"{server.base_url}/sam_test.pth", size=len(CHECKPOINT_BYTES) + 1)
    manifest = Manifest.load(_write_manifest(tmp_path / "manifest.json", {"test": entry}))
    weights_dir = tmp_path / "weights"

    with pytest.raises(WeightsError, match="sent 288000 bytes"):
        fetch_checkpoint(manifest.entries["test"], weights_dir)

    assert list(weights_dir.iterdir()) == []


def test_fetch_of_present_checkpoint_makes_no_request(
    tmp_path: Path, server: CheckpointServer
) -> None:
    spec = _spec(tmp_path, f"{server.base_url}/sam_test.pth")
    weights_dir = tmp_path / "weights"

    first = fetch_checkpoint(spec, weights_dir)
    second = fetch_checkpoint(spec, weights_dir)

    assert first == second
    assert server.requests == ["/sam_test.pth"]


def test_fetch_replaces_corrupt_checkpoint(tmp_path: Path, server: CheckpointServer) -> None:
    spec = _spec(tmp_path, f"{server.base_url}/sam_test.pth")
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    (weights_dir / "sam_test.pth").write_bytes(b"not the checkpoint")

    path = fetch_checkpoint(spec, weights_dir)

    assert sha256_file(path) == CHECKPOINT_SHA256
    assert len(server.requests) == 1


def test_fetch_of_missing_url_raises_naming_the_url(
    tmp_path: Path, server: CheckpointServer
) -> None:
    url = f"{server.base_url}/no_such.pth"
    spec = _spec(tmp_path, url)
    weights_dir = tmp_path / "weights"

    with pytest.raises(WeightsError, match="HTTP 404") as raised:
        fetch_checkpoint(spec, weights_dir)

    assert url in str(raised.value)
    assert list(weights_dir.iterdir()) == []


def test_fetch_of_unreachable_host_raises_naming_the_url(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/sam_test.pth"  # the discard port: nothing listens there
    spec = _spec(tmp_path, url)

    with pytest.raises(WeightsError, match=url):
        fetch_checkpoint(spec, tmp_path / "weights", timeout=2)


def test_fetch_of_project_model_without_url_refuses(tmp_path: Path) -> None:
    spec = _spec(tmp_path, None)

    with pytest.raises(WeightsError, match="no download URL"):
        fetch_checkpoint(spec, tmp_path / "weights")


def test_verify_names_missing_checkpoint_and_how_to_fetch_it() -> None:
    spec = Manifest.load(DEFAULT_MANIFEST_PATH).entries["vit_b"]

    with pytest.raises(WeightsError) as raised:
        verify_checkpoint(spec, Path("/nonexistent/sam_vit_b_01ec64.pth"))

    message = str(raised.value)
    assert "sam_vit_b_01ec64.pth is missing" in message
    assert "`lisegagr weights fetch vit_b` (375 MB)" in message
    assert "--model PATH" in message


def test_verify_rejects_checkpoint_with_wrong_hash(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "https://example.invalid/sam_test.pth", sha256="f" * 64)
    path = tmp_path / "sam_test.pth"
    path.write_bytes(CHECKPOINT_BYTES)

    with pytest.raises(WeightsError, match=f"has sha256 {CHECKPOINT_SHA256}"):
        verify_checkpoint(spec, path)


def test_list_checkpoints_hashes_only_when_asked(tmp_path: Path) -> None:
    good = _entry("https://example.invalid/a.pth", filename="a.pth")
    bad = _entry("https://example.invalid/b.pth", filename="b.pth")
    absent = _entry("https://example.invalid/c.pth", filename="c.pth")
    manifest = Manifest.load(
        _write_manifest(tmp_path / "manifest.json", {"good": good, "bad": bad, "absent": absent})
    )
    (tmp_path / "a.pth").write_bytes(CHECKPOINT_BYTES)
    (tmp_path / "b.pth").write_bytes(CHECKPOINT_BYTES[::-1])

    quick = {s.name: s for s in list_checkpoints(manifest, tmp_path)}
    verified = {s.name: s for s in list_checkpoints(manifest, tmp_path, verify=True)}

    assert {n: (s.present, s.verified, s.size) for n, s in quick.items()} == {
        "good": (True, None, len(CHECKPOINT_BYTES)),
        "bad": (True, None, len(CHECKPOINT_BYTES)),
        "absent": (False, None, None),
    }
    assert {n: s.verified for n, s in verified.items()} == {
        "good": True,
        "bad": False,
        "absent": None,
    }
    assert quick["absent"].path == tmp_path / "c.pth"


def test_project_manifest_pins_meta_checkpoints() -> None:
    manifest = Manifest.load(DEFAULT_MANIFEST_PATH)
    meta = {n: s for n, s in manifest.entries.items() if s.url is not None}

    assert manifest.default == "lisegagr-fields-v4"  # the project's own, committed beside it
    assert {n: (s.arch, s.size, s.sha256[:8]) for n, s in meta.items()} == {
        "vit_b": ("vit_b", 375042383, "ec2df627"),
        "vit_l": ("vit_l", 1249524607, "3adcc431"),
        "vit_h": ("vit_h", 2564550879, "a7bf3b02"),
    }
    for spec in meta.values():
        assert spec.url == f"https://dl.fbaipublicfiles.com/segment_anything/{spec.filename}"


def test_manifest_reads_project_trained_entry(tmp_path: Path) -> None:
    entry = _entry(
        None,
        arch="tiny",
        architecture=TINY.to_dict(),
        settings={"points_per_side": 16, "pred_iou_thresh": 0.5},
        card="weights/lisegagr-test.md",
    )
    manifest = Manifest.load(
        _write_manifest(tmp_path / "manifest.json", {"fields-v1": entry}, default="fields-v1")
    )

    spec = manifest.entries["fields-v1"]
    assert manifest.default == "fields-v1"
    assert spec.architecture == TINY
    assert spec.settings == {"points_per_side": 16, "pred_iou_thresh": 0.5}
    assert spec.card == "weights/lisegagr-test.md"
    assert manifest.find_by_sha256(CHECKPOINT_SHA256) is spec


def test_recorded_settings_are_amg_settings_or_engine_sections() -> None:
    from lisegagr_core.config import load_config
    from lisegagr_core.weights import engine_settings

    flat = {"points_per_side": 16, "pred_iou_thresh": 0.5}
    assert engine_settings(flat) == {"amg": flat}
    sections = {"amg": {"generator": "field-head"}, "rounds": {"max_rounds": 1}}
    assert engine_settings(sections) == sections
    config = load_config(None, {"amg.points_per_side": 8}, model_settings=sections)
    assert config.amg.generator == "field-head" and config.amg.points_per_side == 8
    assert config.rounds.max_rounds == 1
    assert (
        load_config(None, {"rounds.max_rounds": 3}, model_settings=sections).rounds.max_rounds == 3
    )


def test_manifest_with_bad_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text('{"default": "tiny",')

    with pytest.raises(WeightsError, match=r"manifest\.json is not a readable JSON manifest"):
        Manifest.load(path)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"sha256": "ABC"}, "64 lowercase hex"),
        ({"arch": "vit_x"}, "needs 'arch' naming one of"),
        ({"filename": "../escape.pth"}, "bare 'filename'"),
        ({"settings": {"points_per_side": 0}}, "invalid settings"),
        ({"settings": {"no_such_setting": 1}}, "invalid settings"),
        ({"settings": {"amg": {"points_per_side": 0}}}, "invalid settings"),
        ({"settings": {"rounds": {"max_rounds": 0}}}, "invalid settings"),
        ({"architecture": {"encoder_embed_dim": 64}}, "invalid architecture"),
        ({"colour": "blue"}, "unknown keys"),
    ],
)
def test_manifest_rejects_invalid_entry(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    entry = {**_entry("https://example.invalid/a.pth"), **change}
    path = _write_manifest(tmp_path / "manifest.json", {"broken": entry})

    with pytest.raises(WeightsError, match=f"manifest.json entry 'broken' .*{problem}"):
        Manifest.load(path)


def test_manifest_rejects_unknown_default(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path / "manifest.json", {}, default="vit_q")

    with pytest.raises(WeightsError, match="default model 'vit_q'"):
        Manifest.load(path)


def test_choose_model_takes_the_one_asked_for_else_present_vit_b_else_the_default(
    tmp_path: Path,
) -> None:
    manifest = Manifest.load(
        _write_manifest(tmp_path / "manifest.json", {"vit_b": _entry(None)}, default="tiny")
    )

    assert choose_model("vit_h", tmp_path, manifest) == "vit_h"
    assert choose_model(None, tmp_path, manifest) == "tiny"
    assert choose_model("", tmp_path, manifest) == "tiny"
    (tmp_path / "sam_test.pth").write_bytes(b"not checked here")
    assert choose_model(None, tmp_path, manifest) == "vit_b"
    assert choose_model("tiny", tmp_path, manifest) == "tiny"
    without_vit_b = Manifest.load(
        _write_manifest(tmp_path / "manifest.json", {"mine": _entry(None)}, default="mine")
    )
    assert choose_model(None, tmp_path, without_vit_b) == "mine"


def test_a_file_is_hashed_once_per_process_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker checks a checkpoint against the run's sha256 and then loads it: one read."""
    import hashlib

    import lisegagr_core.weights as weights

    made: list[object] = []
    real = hashlib.sha256

    def counting() -> object:
        made.append(None)
        return real()

    monkeypatch.setattr(weights.hashlib, "sha256", counting)
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights")
    first = sha256_file(path)
    assert sha256_file(path) == first == real(b"weights").hexdigest()
    assert len(made) == 1
    path.write_bytes(b"other weights")  # another size: hashed again
    assert sha256_file(path) == real(b"other weights").hexdigest()
    assert len(made) == 2
