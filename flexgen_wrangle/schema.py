"""Extraction schemas: a field->type dict, a JSON schema or a pydantic model, made into one
`ExtractSchema`: the JSON schema the grammar enforces, the schema text the model is shown, the
Arrow struct type of the result and the conversion of a parsed row into it.

Shorthand types: "string", "int", "float", "bool", "date", "list[<type>]"; a list of strings is
an enum, a nested dict an object. Shorthand fields are all required and bounded (string length,
list items, number range) so that a constrained decode always ends within its token budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from flexgen_wrangle import json_types
from flexgen_wrangle.errors import ParseError, SchemaError

MAX_STRING_LENGTH = 128  # characters in a shorthand string field; values are names, not essays
MAX_LIST_ITEMS = 16  # items in a shorthand list field
MAX_ABS_NUMBER = 10**15  # shorthand int/float range: keeps every number to a bounded digit count
DEFAULT_MAX_NEW_TOKENS = 512  # budget for schemas with an unbounded field
ROOT = "schema"

_ALIASES = {"string": "string", "str": "string", "text": "string", "int": "int",
            "integer": "int", "float": "float", "number": "float", "double": "float",
            "bool": "bool", "boolean": "bool", "date": "date"}


@dataclass(frozen=True)
class ExtractSchema:
    json_schema: dict  # an object schema, `$ref`s inlined: what the grammar enforces
    prompt_text: str  # compact JSON of the field->type shorthand: what the model is shown
    arrow_type: pa.StructType

    @property
    def fields(self) -> list[str]:
        return list(self.json_schema["properties"])

    def max_new_tokens(self) -> int:
        """Tokens enough for any output (one per character, a lead space and the stop)."""
        bound = json_types.max_chars(self.json_schema, ROOT)
        return DEFAULT_MAX_NEW_TOKENS if bound is None else bound + 2

    def parse(self, text: str) -> dict:
        """One row's JSON text as a dict of typed values; ParseError when it does not fit."""
        try:  # strict=False: the grammar lets control characters into strings
            value = json.loads(text, strict=False)
        except json.JSONDecodeError as err:
            raise ParseError(f"invalid JSON ({err.msg} at {err.pos}): {text[:80]!r}") from None
        return json_types.convert(self.json_schema, value, ROOT)


def make_schema(schema: Any, max_string_length: int = MAX_STRING_LENGTH) -> ExtractSchema:
    """Dispatch on what the caller gave; SchemaError (a ValueError) names what is wrong."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as err:
            raise SchemaError(f"schema text is not JSON: {err}") from None
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return from_json_schema(schema.model_json_schema())
    if not isinstance(schema, dict) or not schema:
        raise SchemaError("schema must be a non-empty dict of field -> type, a JSON schema or "
                          f"a pydantic model class, got {schema!r}")
    if schema.get("type") == "object" or "$schema" in schema:
        return from_json_schema(schema)
    return from_shorthand(schema, max_string_length)


def from_shorthand(fields: dict, max_string_length: int = MAX_STRING_LENGTH) -> ExtractSchema:
    json_schema = _shorthand_object(fields, ROOT, max_string_length)
    return _finish(json_schema, json.dumps(fields, separators=(",", ":")))


def from_json_schema(schema: dict) -> ExtractSchema:
    node = _inline_refs(schema, schema.get("$defs") or schema.get("definitions") or {}, 0)
    node = {key: value for key, value in node.items() if key not in ("$defs", "definitions")}
    if json_types.kind_of(json_types.unwrap(node, ROOT)[0], ROOT) != "object":
        raise SchemaError("the top level of a JSON schema must be an object with properties")
    text = json.dumps(json_types.shorthand(node, ROOT), separators=(",", ":"))
    return _finish(node, text)


def _finish(json_schema: dict, prompt_text: str) -> ExtractSchema:
    arrow = json_types.arrow_type(json_schema, ROOT)
    return ExtractSchema(json_schema=json_schema, prompt_text=prompt_text, arrow_type=arrow)


def _shorthand_object(fields: dict, path: str, max_len: int) -> dict:
    if not fields:
        raise SchemaError("an object needs at least one field", column=path)
    properties = {}
    for name, spec in fields.items():
        if not isinstance(name, str) or not name:
            raise SchemaError(f"field names must be non-empty strings, got {name!r}", column=path)
        properties[name] = _shorthand_node(spec, f"{path}.{name}", max_len)
    return {"type": "object", "properties": properties, "required": list(properties)}


def _shorthand_node(spec: Any, path: str, max_len: int) -> dict:
    if isinstance(spec, dict):
        return _shorthand_object(spec, path, max_len)
    if isinstance(spec, list):
        if not spec or not all(isinstance(value, str) for value in spec):
            raise SchemaError("an enum must be a non-empty list of strings", column=path)
        if len(set(spec)) != len(spec):
            raise SchemaError(f"enum {spec!r} has duplicate values", column=path)
        return {"enum": list(spec)}
    if not isinstance(spec, str):
        raise SchemaError(f"unsupported type {spec!r}", column=path)
    name = spec.strip().lower()
    if name.startswith("list[") and name.endswith("]"):
        item = _shorthand_node(spec.strip()[5:-1], f"{path}[]", max_len)
        return {"type": "array", "items": item, "maxItems": MAX_LIST_ITEMS}
    return _shorthand_scalar(_ALIASES.get(name), spec, path, max_len)


def _shorthand_scalar(kind: str | None, spec: str, path: str, max_len: int) -> dict:
    if kind is None:
        raise SchemaError(f"unknown type {spec!r}; use string, int, float, bool, date, "
                          "list[<type>], a list of enum values or a nested dict", column=path)
    bounds = {"minimum": -MAX_ABS_NUMBER, "maximum": MAX_ABS_NUMBER}
    return {
        "string": {"type": "string", "maxLength": max_len},
        "int": {"type": "integer", **bounds},
        "float": {"type": "number", **bounds},
        "bool": {"type": "boolean"},
        "date": {"type": "string", "format": "date"},
    }[kind]


def _inline_refs(node: Any, defs: dict, depth: int, path: str = ROOT,
                 chain: tuple[str, ...] = ()) -> Any:
    """Replace `{"$ref": "#/$defs/Name"}` by its definition; a recursive schema is refused,
    naming the field and the definitions that contain themselves."""
    if depth > 32:
        raise SchemaError("the schema is nested deeper than 32 levels", column=path)
    if isinstance(node, list):
        return [_inline_refs(item, defs, depth + 1, path, chain) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        if name not in defs:
            raise SchemaError(f"unresolved reference {node['$ref']!r}", column=path)
        if name in chain:
            raise SchemaError(
                f"the schema is recursive: {name!r} contains itself (through "
                f"{' -> '.join([*chain, name])}), and a recursive type has no fixed column "
                "type; cut the recursion (e.g. make this field a list of strings)", column=path)
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline_refs(merged, defs, depth + 1, path, (*chain, name))
    out = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {field: _inline_refs(child, defs, depth + 1, f"{path}.{field}", chain)
                        for field, child in value.items()}
        else:
            child_path = f"{path}[]" if key == "items" else path
            out[key] = _inline_refs(value, defs, depth + 1, child_path, chain)
    return out
