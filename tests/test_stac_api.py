"""STAC API search: `lisegagr run --stac-api URL --bbox … --datetime … --collection …` finds
its imagery through pystac-client, here from a tiny STAC API served on 127.0.0.1 whose items
point at local COGs; an API that does not answer, or finds nothing, is one sentence."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rasterio.warp import transform_bounds
from typer.testing import CliRunner

import lisegagr.cli_region
from lisegagr.cli import app
from lisegagr_core.errors import InputError
from lisegagr_core.rasters import open_rasters
from lisegagr_core.stac import search_source, stac_rasters, with_assets

from .test_stac import WHEN, _pixels, scene_and_catalog  # noqa: F401 (a fixture)

runner = CliRunner()
CONFORMS = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
]
#: The scene's bounds (ORIGIN, 384 px of 1 m in EPSG:32616) in longitude, latitude.
SCENE = transform_bounds("EPSG:32616", "EPSG:4326", 400_000, 4_399_616, 400_384, 4_400_000)


class StacApi:
    """A STAC API on 127.0.0.1: a landing page, /conformance and /search (GET and POST)
    answering the `items` of the asked collections; `searches` records each search's query."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.searches: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path.rstrip("/") == "/search":
                    asked = dict(urllib.parse.parse_qsl(query))
                    self._answer(api.search(asked))
                elif path.rstrip("/") == "/conformance":
                    self._answer({"conformsTo": CONFORMS})
                elif path == "/":
                    self._answer(api.landing())
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                asked = json.loads(self.rfile.read(length) or b"{}")
                self._answer(api.search(asked))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def landing(self) -> dict[str, Any]:
        return {
            "type": "Catalog",
            "id": "local-api",
            "stac_version": "1.0.0",
            "description": "a STAC API for tests",
            "conformsTo": CONFORMS,
            "links": [
                {"rel": "self", "href": self.url, "type": "application/json"},
                {"rel": "root", "href": self.url, "type": "application/json"},
                {"rel": "conformance", "href": f"{self.url}conformance"},
                {"rel": "search", "href": f"{self.url}search", "method": "GET"},
                {"rel": "search", "href": f"{self.url}search", "method": "POST"},
            ],
        }

    def search(self, asked: dict[str, Any]) -> dict[str, Any]:
        self.searches.append(asked)
        wanted = asked.get("collections") or []
        if isinstance(wanted, str):
            wanted = wanted.split(",")
        found = [i for i in self.items if not wanted or i["collection"] in wanted]
        return {"type": "FeatureCollection", "features": found, "links": []}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api(scene_and_catalog: tuple[np.ndarray, np.ndarray, Path]) -> Iterator[StacApi]:  # noqa: F811
    """The catalog's two items (west, east; absolute hrefs to local COGs) in collection
    `fields`, and a third item of another collection."""
    _, _, catalog = scene_and_catalog
    items = []
    for name in ("west", "east"):
        folder = catalog.parent / "collection" / name
        item = json.loads((folder / f"{name}.json").read_text())
        for asset in item["assets"].values():
            asset["href"] = str((folder / asset["href"]).resolve())
        item["collection"] = "fields"
        item["bbox"] = list(SCENE)
        items.append(item)
    other = json.loads(json.dumps(items[0]))
    other.update(id="elsewhere", collection="other")
    server = StacApi([*items, other])
    yield server
    server.stop()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_search_reads_as_the_rasters_of_the_items_it_finds(
    api: StacApi,
    scene_and_catalog: tuple[np.ndarray, np.ndarray, Path],  # noqa: F811
) -> None:
    _, _, catalog = scene_and_catalog
    source = search_source(
        api.url, collections=["fields"], bbox=SCENE, datetime="2024-07-01/2024-07-31"
    )
    items = stac_rasters(with_assets(source, "red,green,blue"))
    assert [i.item for i in items] == ["west", "east"] and all(i.datetime == WHEN for i in items)
    (asked,) = api.searches  # one search, with the query as asked
    assert asked["collections"] == ["fields"]
    assert asked["datetime"].startswith("2024-07-01") and "2024-07-31" in asked["datetime"]
    assert asked["bbox"] == pytest.approx(list(SCENE), abs=1e-5)
    searched = _pixels([with_assets(source, "red,green,blue")])
    np.testing.assert_array_equal(searched, _pixels([with_assets(str(catalog), "red,green,blue")]))


def test_run_searches_the_api_and_cuts_the_map_to_the_box(
    api: StacApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `run` hands the region flow: the search as its source (recorded, so `resume`
    searches again) and --bbox (longitude, latitude) as a box in the imagery's CRS."""
    handed: dict[str, Any] = {}

    def execute_run(request: Any, **_: Any) -> Any:
        handed.update(sources=list(request.sources), overrides=request.overrides)
        raise SystemExit(0)

    monkeypatch.setattr(lisegagr.cli_region, "execute_run", execute_run)
    west_half = (SCENE[0], SCENE[1], (SCENE[0] + SCENE[2]) / 2, SCENE[3])
    args = ["run", "--stac-api", api.url, "--collection", "fields", "--asset", "red,green,blue"]
    args += ["--bbox", ",".join(f"{v:.7f}" for v in west_half), "--datetime", "2024-07-15"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    (source,) = handed["sources"]
    assert source.startswith(f"stac-api+{api.url}?collections=fields&bbox=")
    assert source.endswith("&datetime=2024-07-15#asset=red,green,blue")
    # the box in UTM: the envelope of the west half's longitude, latitude box (meridians
    # converge, so a few metres more than the half itself)
    west, south, east, north = handed["overrides"]["bbox"]
    assert west == pytest.approx(400_000, abs=10) and east == pytest.approx(400_192, abs=10)
    assert south == pytest.approx(4_399_616, abs=10) and north == pytest.approx(4_400_000, abs=10)
    assert len(open_rasters([source]).rasters) == 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--stac-api", "http://127.0.0.1:{port}/", "--bbox", "-88,39,-87,40"],
            "no STAC API answered at http://127.0.0.1:{port}/ (Connection refused); is the "
            "URL right and the service up?",
        ),
        (
            ["--stac-api", "{api}", "--datetime", "last summer", "--bbox", "-88,39,-87,40"],
            "the search cannot be made (",
        ),
        (
            ["--stac-api", "{api}", "--collection", "nothing", "--bbox", "-88,39,-87,40"],
            "the search (collections nothing, bbox -88,39,-87,40) found no item.",
        ),
        (["--stac-api", "{api}", "--bbox", "400000,4399616,400384,4400000"], "is longitude"),
        (["--stac-api", "ftp://host/"], "--stac-api takes the http(s) URL of a STAC API"),
        (["--datetime", "2024-07-15", "x.tif"], "pick the items of a --stac-api search"),
        ([], "run needs SOURCES (rasters, folders, globs, STAC documents) or --stac-api URL."),
    ],
)
def test_a_search_that_cannot_be_made_is_one_sentence_before_any_work(
    api: StacApi, tmp_path: Path, args: list[str], expected: str
) -> None:
    port = _unused_port()
    filled = [a.format(port=port, api=api.url) for a in args]
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", *filled, "-o", str(out), "--model", "tiny"])
    shown = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert expected.format(port=port) in shown, shown
    assert shown.startswith("error: ") and shown.count("error:") == 1, shown
    assert "Traceback" not in result.output and not out.exists()


def test_a_landing_page_that_is_no_api_is_refused(tmp_path: Path) -> None:
    server = StacApi([])
    server.landing = lambda: {
        "type": "Catalog",
        "id": "x",
        "stac_version": "1.0.0",  # type: ignore[method-assign]
        "description": "static",
        "links": [],
    }
    try:
        with pytest.raises(InputError, match="without item search, not a STAC API"):
            stac_rasters(search_source(server.url))
    finally:
        server.stop()


def test_a_search_finding_too_many_items_asks_to_narrow_it(
    api: StacApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lisegagr_core.stac

    monkeypatch.setattr(lisegagr_core.stac, "MAX_SEARCH_ITEMS", 1)
    with pytest.raises(InputError, match="finds over 1 items; narrow it with --bbox"):
        stac_rasters(search_source(api.url, collections=["fields"]))


def test_a_run_over_a_search_maps_its_items_and_records_the_search(
    api: StacApi,
    scene_and_catalog: tuple[np.ndarray, np.ndarray, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    from rasterio.windows import Window

    from lisegagr_core.metrics import score_partition
    from lisegagr_core.mosaic import open_mosaic, read_window
    from lisegagr_core.run import run_region

    from .flow_helpers import truth_spec
    from .test_region import SMALL_TILES, _write_geotiff

    _, truth, _ = scene_and_catalog
    source = with_assets(search_source(api.url, collections=["fields"]), "red,green,blue")
    out = tmp_path / "out"
    plain = _write_geotiff(tmp_path / "truth.tif", np.zeros((384, 384, 3), np.uint8))
    run_region([source], str(out), SMALL_TILES, truth_spec(plain, truth.astype(np.int64)))
    labels = read_window(open_mosaic(str(out / "mosaic.zarr"), mode="r"), Window(0, 0, 384, 384))
    assert score_partition(truth, labels).f1 >= 0.99
    assert json.loads((out / "manifest.json").read_text())["sources"] == [source]
