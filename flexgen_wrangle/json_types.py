"""JSON-schema nodes as column types: the Arrow type of a node, the conversion of a parsed JSON
value into that type, the shorthand shown to the model, and a bound on the output's length.

A node is a plain JSON-schema dict with `$ref`s already inlined. Supported kinds: string, int,
float, bool, date (`format: date`), enum (strings or ints), list (`items`), object
(`properties`); any of them nullable through `anyOf [X, null]` or `type: [X, "null"]`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pyarrow as pa

from flexgen_wrangle.errors import ParseError, SchemaError

_SCALAR_TYPES = {"string": "string", "integer": "int", "number": "float", "boolean": "bool"}
_ARROW = {"string": pa.string(), "date": pa.date32(), "int": pa.int64(), "float": pa.float64(),
          "bool": pa.bool_()}
FLOAT_DIGITS = 24  # a bounded JSON number: sign, 16 integer digits, point, fraction (xgrammar: 6)


def unwrap(node: dict, path: str) -> tuple[dict, bool]:
    """(the non-null part of `node`, whether null is allowed)."""
    if not isinstance(node, dict):
        raise SchemaError(f"expected a JSON-schema object, got {node!r}", column=path)
    options = node.get("anyOf") or node.get("oneOf")
    if options is not None:
        rest = [option for option in options if option.get("type") != "null"]
        if len(rest) != 1:
            raise SchemaError("unions other than `X or null` are not supported; give the "
                              "field one type (a string holds any of them)", column=path)
        inner, _ = unwrap(rest[0], path)
        return inner, len(rest) < len(options)
    types = node.get("type")
    if isinstance(types, list):
        rest = [name for name in types if name != "null"]
        if len(rest) != 1:
            raise SchemaError(f"type {types!r} is not supported; use one type (or null)",
                              column=path)
        return {**node, "type": rest[0]}, len(rest) < len(types)
    return node, False


def kind_of(node: dict, path: str) -> str:
    """One of string, int, float, bool, date, enum, list, object."""
    if "enum" in node:
        values = node["enum"]
        strings = all(isinstance(value, str) for value in values)
        ints = all(isinstance(value, int) and not isinstance(value, bool) for value in values)
        if not values or not (strings or ints):
            raise SchemaError("enum values must be all strings or all integers", column=path)
        return "enum"
    name = node.get("type")
    if name == "string" and node.get("format") == "date":
        return "date"
    if name in _SCALAR_TYPES:
        return _SCALAR_TYPES[name]
    if name == "array":
        if not isinstance(node.get("items"), dict):
            raise SchemaError("an array needs `items` (one schema for every item)", column=path)
        return "list"
    if name == "object" or "properties" in node:
        if not node.get("properties") and node.get("additionalProperties"):
            raise SchemaError("a map with free keys (additionalProperties) has no fixed column "
                              "type; list its keys as properties, or extract a list of "
                              '{"key", "value"} objects', column=path)
        if not isinstance(node.get("properties"), dict) or not node["properties"]:
            raise SchemaError("an object needs at least one property", column=path)
        return "object"
    raise SchemaError(f"unsupported type {name!r}; supported: string, integer, number, "
                      "boolean, date, enum, array, object", column=path)


def arrow_type(node: dict, path: str) -> pa.DataType:
    node, _ = unwrap(node, path)
    kind = kind_of(node, path)
    if kind == "enum":
        return pa.string() if isinstance(node["enum"][0], str) else pa.int64()
    if kind == "list":
        return pa.list_(arrow_type(node["items"], f"{path}[]"))
    if kind == "object":
        return pa.struct([
            pa.field(name, arrow_type(child, f"{path}.{name}"))
            for name, child in node["properties"].items()
        ])
    return _ARROW[kind]


def shorthand(node: dict, path: str) -> Any:
    """The compact type text the model is shown: "string", ["a", "b"], {"x": "int"}, ..."""
    node, _ = unwrap(node, path)
    kind = kind_of(node, path)
    if kind == "enum":
        return list(node["enum"])
    if kind == "list":
        item = shorthand(node["items"], f"{path}[]")
        return f"list[{item}]" if isinstance(item, str) else [item]
    if kind == "object":
        return {name: shorthand(child, f"{path}.{name}")
                for name, child in node["properties"].items()}
    return kind


def convert(node: dict, value: Any, path: str) -> Any:
    """A parsed JSON value as the Python value for `arrow_type(node)`; ParseError if it is not."""
    node, nullable = unwrap(node, path)
    if value is None:
        if nullable:
            return None
        raise ParseError("null where a value is required", column=path)
    kind = kind_of(node, path)
    if kind == "object":
        return _convert_object(node, value, path)
    if kind == "list":
        if not isinstance(value, list):
            raise ParseError(f"expected a list, got {value!r}", column=path)
        return [convert(node["items"], item, f"{path}[]") for item in value]
    return _convert_scalar(node, kind, value, path)


def _convert_object(node: dict, value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise ParseError(f"expected an object, got {value!r}", column=path)
    required = set(node.get("required", ()))
    missing = sorted(required - set(value))
    if missing:
        raise ParseError(f"missing field(s) {missing}", column=path)
    return {name: convert(child, value[name], f"{path}.{name}") if name in value else None
            for name, child in node["properties"].items()}


def _convert_scalar(node: dict, kind: str, value: Any, path: str) -> Any:
    if kind == "enum":
        if value not in node["enum"]:
            raise ParseError(f"{value!r} is not one of {node['enum']}", column=path)
        return value
    if kind == "date":
        return _parse_date(value, path)
    expected = {"string": str, "int": int, "float": (int, float), "bool": bool}[kind]
    if not isinstance(value, expected) or (kind in ("int", "float") and isinstance(value, bool)):
        raise ParseError(f"expected {kind}, got {value!r}", column=path)
    return float(value) if kind == "float" else value


def _parse_date(value: Any, path: str) -> dt.date:
    if isinstance(value, str) and len(value) == 10:
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ParseError(f"{value!r} is not a date (YYYY-MM-DD)", column=path)


def max_chars(node: dict, path: str) -> int | None:
    """An upper bound on the length of any JSON text matching `node`; None when unbounded."""
    node, nullable = unwrap(node, path)
    kind = kind_of(node, path)
    floor = 4 if nullable else 0  # "null"
    if kind == "object":
        parts = [_object_entry_chars(name, child, f"{path}.{name}")
                 for name, child in node["properties"].items()]
        return None if None in parts else max(floor, 2 + sum(parts))
    bound = _leaf_chars(node, kind, path)
    return None if bound is None else max(floor, bound)


def _object_entry_chars(name: str, child: dict, path: str) -> int | None:
    value = max_chars(child, path)
    return None if value is None else len(json.dumps(name)) + 2 + value  # key, ':' and ','


def _leaf_chars(node: dict, kind: str, path: str) -> int | None:
    if kind == "list":
        item = max_chars(node["items"], f"{path}[]")
        if item is None or "maxItems" not in node:
            return None
        return 2 + node["maxItems"] * (item + 1)
    if kind == "enum":
        return max(len(json.dumps(value)) for value in node["enum"])
    if kind == "string":
        return 2 + node["maxLength"] if "maxLength" in node and "pattern" not in node else None
    if kind == "int" and "minimum" in node and "maximum" in node:
        return max(len(str(int(node["minimum"]))), len(str(int(node["maximum"]))))
    if kind == "float" and "minimum" in node and "maximum" in node:
        return FLOAT_DIGITS
    return {"date": 12, "bool": 5}.get(kind)
