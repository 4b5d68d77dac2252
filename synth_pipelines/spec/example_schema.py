"""A spec's ``fields`` compiled to one pydantic model: the single source for the JSON schema sent to
the model (structured output / grammar), the rule-based schema-compliance check, and the Arrow/Parquet
column types of the example payload.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, create_model

from synth_pipelines.spec.model import DomainSpec, FieldSpec

# Tiny local models never stop on their own under an unbounded grammar (endless digits, endless
# strings). Every string, array and number that reaches the JSON schema gets a bound, even when the
# spec author forgot one.
DEFAULT_MAX_STRING = 300
DEFAULT_MAX_ITEMS = 5
DEFAULT_INTEGER_RANGE = (-1_000_000, 1_000_000)
DEFAULT_NUMBER_RANGE = (-1_000_000.0, 1_000_000.0)


def string_min_length(field: FieldSpec) -> int:
    """A string field's lower bound: the spec's ``min_length``, else 1 (a value is not empty)."""
    return field.min_length if field.min_length is not None else 1


def _python_type(name: str, field: FieldSpec) -> tuple[Any, dict[str, Any]]:
    """Python annotation and pydantic Field kwargs for one spec field (bounds always applied)."""
    kwargs: dict[str, Any] = {"description": field.description or None}
    if field.enum is not None:
        return Literal[tuple(field.enum)], kwargs
    if field.type == "string":
        kwargs["max_length"] = field.max_length or DEFAULT_MAX_STRING
        kwargs["min_length"] = string_min_length(field)
        if field.pattern:
            kwargs["pattern"] = field.pattern
        return str, kwargs
    if field.type == "integer":
        lo, hi = DEFAULT_INTEGER_RANGE
        kwargs["ge"] = int(field.min) if field.min is not None else lo
        kwargs["le"] = int(field.max) if field.max is not None else hi
        return int, kwargs
    if field.type == "number":
        lo_f, hi_f = DEFAULT_NUMBER_RANGE
        kwargs["ge"] = field.min if field.min is not None else lo_f
        kwargs["le"] = field.max if field.max is not None else hi_f
        return float, kwargs
    if field.type == "boolean":
        return bool, kwargs
    if field.type == "array":
        assert field.items is not None
        item_type, item_kwargs = _python_type(f"{name}_item", field.items)
        item_kwargs = {k: v for k, v in item_kwargs.items() if k != "description" and v is not None}
        from typing import Annotated

        annotated_item = Annotated[item_type, Field(**item_kwargs)] if item_kwargs else item_type
        kwargs["min_length"] = field.min_items if field.min_items is not None else 1
        kwargs["max_length"] = field.max_items or DEFAULT_MAX_ITEMS
        return list[annotated_item], kwargs  # type: ignore[valid-type]
    if field.type == "object":
        assert field.properties is not None
        return _build_model(f"{name.title().replace('_', '')}Object", field.properties), kwargs
    raise AssertionError(f"unhandled field type {field.type}")


def _build_model(model_name: str, fields: dict[str, FieldSpec]) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for fname, fspec in fields.items():
        annotation, kwargs = _python_type(fname, fspec)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if fspec.required:
            definitions[fname] = (annotation, Field(**kwargs))
        else:
            definitions[fname] = (annotation | None, Field(default=None, **kwargs))
    return create_model(model_name, __config__=ConfigDict(extra="forbid"), **definitions)


@cache
def _example_model_cached(spec_json: str) -> type[BaseModel]:
    spec = DomainSpec.model_validate_json(spec_json)
    name = "".join(part.title() for part in spec.domain.split("_")) + "Example"
    return _build_model(name, spec.fields)


def example_model(spec: DomainSpec) -> type[BaseModel]:
    """The pydantic model of one example of this domain (cached per spec content)."""
    return _example_model_cached(spec.model_dump_json())


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$defs`` references so every grammar converter (llama.cpp's included) accepts the schema."""
    defs = schema.get("$defs", {})

    def walk(node: Any, *, names: bool = False) -> Any:
        # ``names`` marks a mapping of property names (``properties``): its keys are field names,
        # never schema keywords, so a field called "title" must survive.
        if isinstance(node, dict):
            if names:
                return {k: walk(v) for k, v in node.items()}
            if "$ref" in node:
                ref = node["$ref"].split("/")[-1]
                return walk(defs[ref])
            return {
                k: walk(v, names=k == "properties")
                for k, v in node.items()
                if k != "$defs" and not (k == "title" and isinstance(v, str))
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _drop_nullable(node: Any) -> Any:
    """Turn ``anyOf: [X, null]`` (optional fields) into X: models should fill optional fields too."""
    if isinstance(node, dict):
        any_of = node.get("anyOf")
        if isinstance(any_of, list) and len(any_of) == 2 and {"type": "null"} in any_of:
            inner = next(s for s in any_of if s != {"type": "null"})
            merged = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
            merged.update(inner)
            return _drop_nullable(merged)
        return {k: _drop_nullable(v) for k, v in node.items() if not (k == "default" and v is None)}
    if isinstance(node, list):
        return [_drop_nullable(v) for v in node]
    return node


def json_schema_for_model(model: type[BaseModel]) -> dict[str, Any]:
    """A self-contained, bounded JSON schema for structured output."""
    return _drop_nullable(_inline_refs(model.model_json_schema()))


def example_json_schema(spec: DomainSpec) -> dict[str, Any]:
    return json_schema_for_model(example_model(spec))


def _arrow_type(field: FieldSpec) -> pa.DataType:
    if field.enum is not None:
        kinds = {type(v) for v in field.enum}
        if kinds == {int}:
            return pa.int64()
        if kinds <= {int, float}:
            return pa.float64()
        return pa.string()
    if field.type == "string":
        return pa.string()
    if field.type == "integer":
        return pa.int64()
    if field.type == "number":
        return pa.float64()
    if field.type == "boolean":
        return pa.bool_()
    if field.type == "array":
        assert field.items is not None
        return pa.list_(_arrow_type(field.items))
    assert field.properties is not None
    return pa.struct(
        [pa.field(n, _arrow_type(f), nullable=not f.required) for n, f in field.properties.items()]
    )


def example_arrow_schema(spec: DomainSpec) -> pa.Schema:
    """Arrow schema of the typed example columns, derived from the same field list as the pydantic model."""
    return pa.schema([pa.field(n, _arrow_type(f), nullable=not f.required) for n, f in spec.fields.items()])


def field_guide(spec: DomainSpec, narrowed: dict[str, list[Any]] | None = None) -> str:
    """One line per field: its type, allowed values (``narrowed`` by the cell's conditions when
    given), length bound and description. The generator fills the fields from it; the judges check
    an example against it."""
    lines = []
    for name, f in spec.fields.items():
        bits: list[str] = [f.type]
        enum = (narrowed or {}).get(name) or f.enum
        if enum:
            bits.append("one of " + ", ".join(map(str, enum)))
        if f.max_length:
            bits.append(f"at most {f.max_length} chars")
        lines.append(f"- {name} ({'; '.join(bits)}): {f.description}")
    return "\n".join(lines)
