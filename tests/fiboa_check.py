"""Validate a GeoParquet file as fiboa 0.3, offline, against the schemas in tests/fiboa/.

The checks of vecorel-cli's GeoParquet validator (see tests/fiboa/README.md): the collection
metadata and its schemas, required columns, nullability, the Parquet type of each Vecorel SDL
type, and every value against its property's schema. Returns the problems found, one sentence
each; an empty list is a valid file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import yaml

HERE = Path(__file__).parent / "fiboa"
VECOREL = "https://vecorel.org/specification/v0.1.0/schema.yaml"
FIBOA = "https://fiboa.org/specification/v0.3.0/schema.yaml"
VENDORED = {VECOREL: HERE / "vecorel-v0.1.0.yaml", FIBOA: HERE / "fiboa-v0.3.0.yaml"}

PARQUET_TYPES = {  # vecorel_cli.parquet.types.PA_TYPE_CHECK
    "boolean": pa.types.is_boolean,
    "int8": pa.types.is_int8,
    "uint8": pa.types.is_uint8,
    "int16": pa.types.is_int16,
    "uint16": pa.types.is_uint16,
    "int32": pa.types.is_int32,
    "uint32": pa.types.is_uint32,
    "int64": pa.types.is_int64,
    "uint64": pa.types.is_uint64,
    "float": pa.types.is_float32,
    "double": pa.types.is_float64,
    "binary": pa.types.is_binary,
    "string": pa.types.is_string,
    "array": pa.types.is_list,
    "object": lambda t: pa.types.is_struct(t) or pa.types.is_map(t),
    "date": pa.types.is_date32,
    "date-time": pa.types.is_timestamp,
    "geometry": pa.types.is_binary,
    "bounding-box": pa.types.is_struct,
}
_JSON_TYPES = {
    **dict.fromkeys(
        ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"], "integer"
    ),
    "float": "number",
    "double": "number",
}


def _json_schema(sdl: dict[str, Any]) -> dict[str, Any]:
    """An SDL property schema as JSON Schema (values of types JSON has; others unchecked)."""
    out = copy.deepcopy(sdl)
    kind = out.pop("type", None)
    if kind in _JSON_TYPES:
        out["type"] = _JSON_TYPES[kind]
    elif kind in ("string", "array", "object", "boolean"):
        out["type"] = kind
    for key in ("items", "contains", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _json_schema(out[key])
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _json_schema(v) for k, v in out["properties"].items()}
    return out


def _merge(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"required": [], "collection": {}, "properties": {}}
    for schema in schemas:
        merged["required"] += [r for r in schema.get("required", []) if r not in merged["required"]]
        merged["collection"].update(schema.get("collection", {}))
        merged["properties"].update(schema.get("properties", {}))
    return merged


def validate_fiboa_parquet(path: str | Path) -> list[str]:
    problems: list[str] = []
    arrow_schema = pq.read_schema(path)
    metadata = arrow_schema.metadata or {}
    if b"geo" not in metadata:
        return ["the file has no GeoParquet metadata"]
    if b"collection" not in metadata:
        return ["Collection metadata is missing in Parquet header"]
    geo = json.loads(metadata[b"geo"])
    collection = json.loads(metadata[b"collection"])
    schemas = collection.get("schemas", {})
    if len(schemas) != 1:
        return [f"expected the schemas of one collection, got {sorted(schemas)}"]
    ((collection_id, uris),) = schemas.items()
    if FIBOA not in uris:
        problems.append(f"schemas of {collection_id} lack fiboa 0.3 ({FIBOA})")
    resolved = []
    for uri in uris:
        if uri not in VENDORED:
            problems.append(f"schema {uri} can't be loaded (not vendored)")
            continue
        resolved.append(yaml.safe_load(VENDORED[uri].read_text()))
    custom = collection.get("schemas:custom", {})
    schema = _merge([*resolved, custom])
    properties = schema["properties"]
    # `schemas` is a collection-level property: its value against its own schema
    for error in jsonschema.Draft7Validator(_json_schema(properties["schemas"])).iter_errors(
        schemas
    ):
        problems.append(f"schemas: {error.message}")

    table = pq.read_table(path)
    for key in schema["required"]:
        if key not in table.column_names and not schema["collection"].get(key, False):
            problems.append(f"{key}: Required field is missing")
    for key in table.column_names:
        if key not in properties:
            problems.append(f"{key}: No schema defined")
            continue
        rules = properties[key]
        field = arrow_schema.field(key)
        nullable = key not in schema["required"]
        if field.nullable != nullable:
            problems.append(
                f"{key}: Nullability differs, is {field.nullable} but must be {nullable}"
            )
        dtype = rules.get("type")
        if dtype not in PARQUET_TYPES or not PARQUET_TYPES[dtype](field.type):
            problems.append(f"{key}: Data type invalid, is {field.type} but must be {dtype}")
            continue
        values = table.column(key).to_pylist()
        if dtype == "date-time":
            if field.type.tz != "UTC":
                problems.append(f"{key}: Timestamp timezone invalid, must be UTC")
        elif dtype == "geometry":
            if key not in geo.get("columns", {}):
                problems.append(f"{key}: Geometry column not found in GeoParquet metadata")
            for value in values:
                geometry = shapely.from_wkb(value)
                if not geometry.is_valid:
                    problems.append(f"{key}: Geometry {geometry.wkt[:60]} is not valid")
                    break
        else:
            validator = jsonschema.Draft7Validator(_json_schema(rules))
            for value in values:
                if value is None:
                    continue
                error = jsonschema.exceptions.best_match(validator.iter_errors(value))
                if error is not None:
                    problems.append(f"{key}: {error.message}")
                    break
    if "collection" in table.column_names:
        others = set(table.column("collection").to_pylist()) - {collection_id}
        if others:
            problems.append(f"collection: rows of {sorted(others)} have no schemas")
    return problems
