"""Imagery from STAC: an item, an item collection or a static catalog, local or any fsspec URL.

A STAC source is a ``.json`` document; which of its items' assets to read is its fragment,
``catalog.json#asset=visual`` or ``item.json#asset=red,green,blue`` (`lisegagr run --asset`
writes it, so the manifest records it and `resume` reads the same). One asset per item is a
raster of its own; several are one raster per item, a band from each (single-band COGs of one
grid, as Sentinel-2's `red`, `green`, `blue`). Without an asset, every item's `visual` asset.

Catalogs and collections are walked through their `child` and `item` links; relative hrefs
resolve against the document that holds them. An item's `datetime` (or `start_datetime`)
dates its imagery (fiboa's `determination:datetime`).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from lisegagr_core.errors import InputError
from lisegagr_core.storage import storage_errors

#: The asset read when none is named (STAC's common name for a true-colour image).
DEFAULT_ASSET = "visual"
_FRAGMENT = "#asset="
#: Documents a catalog walk reads at most (a static catalog larger than this is an archive).
MAX_DOCUMENTS = 10_000


@dataclass(frozen=True)
class StacRaster:
    """One item's chosen assets: the URLs of its bands' files (one file, or one per band)."""

    item: str
    hrefs: tuple[str, ...]
    datetime: str | None


def is_stac(source: str) -> bool:
    """Whether `source` names a STAC document (a ``.json`` path or URL, with its fragment)."""
    return source.split("#", 1)[0].lower().endswith(".json")


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
