"""Checks a JSON value against the published schemas (docs/schemas/<topic>.json): the subset
of JSON Schema 2020-12 that msgspec generates ($ref into $defs, anyOf, enum, type,
properties, required, items, maxLength), so the files themselves, not only the msgspec
types, are shown to accept what the system publishes. No dependency on a validator package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"

_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
}


def load(topic: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{topic}.json").read_text())  # type: ignore[no-any-return]


def errors(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None,
           at: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``value`` (empty: valid)."""
    root = schema if root is None else root
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return errors(value, root["$defs"][name], root, at)
    if "anyOf" in schema:
        tries = [errors(value, s, root, at) for s in schema["anyOf"]]
        return [] if any(not t for t in tries) else [f"{at}: matches no anyOf branch: {tries}"]
    out: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{at}: {value!r} not in {schema['enum']}")
    kind = schema.get("type")
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is not None:
        ok = isinstance(value, _TYPES[kind])
    else:
        ok = True
    if not ok:
        return [*out, f"{at}: {value!r} is not {kind}"]
    if isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
        out.append(f"{at}: longer than {schema['maxLength']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{at}: missing {name}" for name in schema.get("required", [])
                if name not in value]
        out += [f"{at}: {name} is not in the schema" for name in value if name not in props]
        for name, sub in value.items():
            if name in props:
                out += errors(sub, props[name], root, f"{at}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += errors(item, schema["items"], root, f"{at}[{i}]")
    return out
