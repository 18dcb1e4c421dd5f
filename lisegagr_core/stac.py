"""Imagery from STAC: an item, an item collection or a static catalog, local or any fsspec URL.

A STAC source is a ``.json`` document; which of its items' assets to read is its fragment,
``catalog.json#asset=visual`` or ``item.json#asset=red,green,blue`` (`lisegagr run --asset`
writes it, so the manifest records it and `resume` reads the same). One asset per item is a
raster of its own; several are one raster per item, a band from each (single-band COGs of one
grid, as Sentinel-2's `red`, `green`, `blue`). Without an asset, every item's `visual` asset.

Catalogs and collections are walked through their `child` and `item` links; relative hrefs
resolve against the document that holds them. An item's `datetime` (or `start_datetime`)
dates its imagery (fiboa's `determination:datetime`).

A STAC API search is a source too: ``stac-api+https://host/v1?collections=c&bbox=w,s,e,n&
datetime=...#asset=...`` (`search_source` writes it, `lisegagr run --stac-api` too), its items
found through `pystac-client` when the run is planned, so the manifest records the query and
`resume` searches again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import re
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from lisegagr_core.errors import InputError, first_line
from lisegagr_core.storage import storage_errors

#: The asset read when none is named (STAC's common name for a true-colour image).
DEFAULT_ASSET = "visual"
_FRAGMENT = "#asset="
#: Documents a catalog walk reads at most (a static catalog larger than this is an archive).
MAX_DOCUMENTS = 10_000
#: The prefix of a STAC API search source.
API_PREFIX = "stac-api+"
#: Items a search may find (more is a continent, not a region: narrow the search).
MAX_SEARCH_ITEMS = 1000
#: Seconds to wait for a STAC API's answer.
API_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class StacRaster:
    """One item's chosen assets: the URLs of its bands' files (one file, or one per band)."""

    item: str
    hrefs: tuple[str, ...]
    datetime: str | None


def is_stac(source: str) -> bool:
    """Whether `source` names a STAC document (a ``.json`` path or URL, with its fragment) or
    a STAC API search (`search_source`)."""
    return source.startswith(API_PREFIX) or source.split("#", 1)[0].lower().endswith(".json")


def search_source(
    api: str,
    *,
    collections: Sequence[str] = (),
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
) -> str:
    """The source that searches the STAC API at `api` (its landing page URL): items of
    `collections` intersecting `bbox` (WGS 84 longitude, latitude) at `datetime` (RFC 3339,
    or an interval ``start/end``)."""
    if not api.startswith(("http://", "https://")):
        raise InputError(f"--stac-api takes the http(s) URL of a STAC API, not {api!r}.")
    query: dict[str, str] = {}
    if collections:
        query["collections"] = ",".join(collections)
    if bbox is not None:
        query["bbox"] = ",".join(f"{v:.12g}" for v in bbox)
    if datetime:
        query["datetime"] = datetime
    url = api.split("#", 1)[0]
    return f"{API_PREFIX}{url}?{urllib.parse.urlencode(query, safe=',/:')}"


def _search(source: str) -> Iterator[tuple[dict[str, Any], str]]:
    """(item, the URL its relative hrefs resolve against) of every item a search finds.

    One sentence for an API that does not answer, that is no STAC API with item search, a
    query it refuses, no item found, or more than `MAX_SEARCH_ITEMS`.
    """
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    api, _, query = source.removeprefix(API_PREFIX).partition("?")
    params = dict(urllib.parse.parse_qsl(query))
    try:
        with warnings.catch_warnings(), _quiet_retries():
            warnings.simplefilter("ignore")  # pystac-client warns of what it does without
            client = Client.open(api, timeout=API_TIMEOUT_S)
    except APIError as exc:
        reason = _why(exc)
        raise InputError(
            f"no STAC API answered at {api} ({reason}); is the URL right and the service up?"
        ) from None
    except Exception as exc:  # pystac's own errors for a landing page that is not STAC
        raise InputError(
            f"{api} is not a STAC API ({exc.__class__.__name__}: {first_line(exc)})."
        ) from None
    if not client.conforms_to("ITEM_SEARCH"):
        raise InputError(f"{api} is a STAC catalog without item search, not a STAC API.")
    collections = params.get("collections")
    try:
        with warnings.catch_warnings(), _quiet_retries():
            warnings.simplefilter("ignore")  # e.g. a search link without a media type
            search = client.search(
                collections=collections.split(",") if collections else None,
                bbox=[float(v) for v in params["bbox"].split(",")] if "bbox" in params else None,
                datetime=params.get("datetime"),
                max_items=MAX_SEARCH_ITEMS + 1,
            )
            items = list(search.items_as_dicts())
    except APIError as exc:
        raise InputError(f"{api} refused the search ({_why(exc)}).") from None
    except Exception as exc:  # pystac-client's bare Exception for a --datetime it cannot read
        raise InputError(f"{api}: the search cannot be made ({first_line(exc)}).") from None
    asked = ", ".join(f"{k} {v}" for k, v in params.items()) or "no criteria"
    if not items:
        raise InputError(f"{api}: the search ({asked}) found no item.")
    if len(items) > MAX_SEARCH_ITEMS:
        raise InputError(
            f"{api}: the search ({asked}) finds over {MAX_SEARCH_ITEMS} items; narrow it "
            "with --bbox, --datetime or --collection."
        )
    for item in items:
        links = [link for link in item.get("links") or [] if isinstance(link, dict)]
        where = next((str(k["href"]) for k in links if k.get("rel") == "self"), api)
        yield item, where


@contextlib.contextmanager
def _quiet_retries() -> Iterator[None]:
    """urllib3's retry warnings off the terminal (the failure is one sentence), unless debug
    logs are on (`lisegagr -v`)."""
    logger = logging.getLogger("urllib3.connectionpool")
    before = logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def _why(exc: BaseException) -> str:
    """The cause of a failed request, short: the OS's words when there are some."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
    if found:
        return found.group(1).strip().rstrip(".")
    if "timed out" in text.lower():
        return "timed out"
    return first_line(exc)[:200]


def with_assets(source: str, assets: str | None) -> str:
    """`source` with the assets to read as its fragment (STAC sources only), e.g.
    ``with_assets("cat.json", "red,green,blue") == "cat.json#asset=red,green,blue"``."""
    if assets is None or not is_stac(source):
        return source
    names = [a.strip() for a in assets.split(",") if a.strip()]
    if len(names) not in (1, 3):
        raise InputError(f"--asset takes one asset or three (as R,G,B), not {assets!r}.")
    return f"{source.split('#', 1)[0]}{_FRAGMENT}{','.join(names)}"


def split_source(source: str) -> tuple[str, tuple[str, ...]]:
    """(document URL, asset names) of a STAC source."""
    url, _, fragment = source.partition("#")
    if not fragment:
        return url, (DEFAULT_ASSET,)
    if not fragment.startswith(_FRAGMENT[1:]):
        raise InputError(f"{source}: a STAC source's fragment is #asset=NAME[,NAME,NAME].")
    return url, tuple(a for a in fragment[len(_FRAGMENT) - 1 :].split(",") if a)


def stac_rasters(source: str, storage_options: Mapping[str, Any] | None = None) -> list[StacRaster]:
    """The rasters a STAC source holds, one per item, with the chosen assets' URLs.

    Raises `InputError` (one sentence) for a document that cannot be read, that is not a STAC
    item, item collection or catalog, that holds no item, or an item without an asset asked.
    """
    url, assets = split_source(source)
    rasters = []
    for item, where in _items(url, storage_options, source):
        available = item.get("assets") or {}
        missing = [a for a in assets if a not in available]
        name = str(item.get("id") or where)
        if missing:
            have = ", ".join(sorted(available)) or "none"
            hint = " (pick them with --asset)" if assets == (DEFAULT_ASSET,) else ""
            raise InputError(
                f"{source}: item {name} has no asset {', '.join(map(repr, missing))}{hint}; "
                f"its assets are {have}."
            )
        hrefs = []
        for asset in assets:
            href = available[asset].get("href") if isinstance(available[asset], dict) else None
            if not href:
                raise InputError(f"{source}: asset {asset!r} of item {name} has no href.")
            hrefs.append(_resolve(where, str(href)))
        properties = item.get("properties") or {}
        when = properties.get("datetime") or properties.get("start_datetime")
        rasters.append(StacRaster(name, tuple(hrefs), str(when) if when else None))
    if not rasters:
        raise InputError(f"{url}: the STAC document holds no item.")
    return rasters


def _items(
    url: str, storage_options: Mapping[str, Any] | None, source: str
) -> Iterator[tuple[dict[str, Any], str]]:
    """(item, the URL its hrefs resolve against) of every item under `url`."""
    if url.startswith(API_PREFIX):
        yield from _search(url)
        return
    todo, seen = [url], set()
    while todo:
        where = todo.pop(0)
        if where in seen:
            continue
        seen.add(where)
        if len(seen) > MAX_DOCUMENTS:
            raise InputError(f"{url}: the catalog holds over {MAX_DOCUMENTS} documents.")
        document = _read_json(where, storage_options)
        kind = document.get("type")
        if kind == "Feature" and "assets" in document:
            yield document, where
        elif kind == "FeatureCollection":
            for feature in document.get("features") or []:
                if isinstance(feature, dict) and "assets" in feature:
                    yield feature, where
        elif kind in ("Catalog", "Collection") and "links" in document:
            for link in document["links"]:
                if isinstance(link, dict) and link.get("rel") in ("child", "item"):
                    todo.append(_resolve(where, str(link.get("href", ""))))
        else:
            raise InputError(
                f"{where} is not a STAC item, item collection or catalog "
                f"(its type is {kind!r}); {source} cannot be read as imagery."
            )


def _read_json(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    with storage_errors(url):
        try:
            if "://" in url and not url.startswith("file://"):
                fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
                with fs.open(path, "rb") as stream:
                    text = stream.read()
            else:
                with open(url.removeprefix("file://"), "rb") as stream:
                    text = stream.read()
        except FileNotFoundError:
            raise InputError(f"{url}: no such STAC document.") from None
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{url} is not JSON ({exc.__class__.__name__}), so not STAC.") from None
    if not isinstance(document, dict):
        raise InputError(f"{url} is not a STAC item, item collection or catalog.")
    return document


def _resolve(base: str, href: str) -> str:
    """`href` as an absolute path or URL, relative ones against the document `base`."""
    if "://" in href:
        return href
    if "://" in base and not base.startswith("file://"):
        scheme, rest = base.split("://", 1)
        if href.startswith("/"):
            bucket = rest.split("/", 1)[0]
            return f"{scheme}://{bucket}{href}" if scheme in ("s3", "gs", "az") else href
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), href))}"
    local = base.removeprefix("file://")
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(local)), href))


def check_sources(sources: Sequence[str], assets: str | None) -> list[str]:
    """`sources` with `assets` written into each STAC source; one sentence when `assets` is
    given but no source is STAC."""
    if assets is not None and not any(is_stac(s) for s in sources):
        raise InputError(
            "--asset picks assets of STAC items, and no source is a STAC document (.json)."
        )
    return [with_assets(s, assets) for s in sources]
