"""Tier 2: spec parsing, precise errors, compilation to pydantic / JSON schema / Arrow."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from synth_pipelines.spec.example_schema import example_arrow_schema, example_json_schema, example_model
from synth_pipelines.spec.loading import TEMPLATES_DIR, load_spec, parse_spec
from synth_pipelines.spec.model import SpecError
from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name

REPO = Path(__file__).resolve().parent.parent


def minimal(**over):
    base = {
        "name": "t",
        "version": 1,
        "domain": "demo",
        "type": "api-example",
        "description": "d",
        "fields": {"q": {"type": "string", "description": "question"}},
    }
    base.update(over)
    return base


@pytest.mark.parametrize("path", sorted((REPO / "schemas").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_domains_load(path: Path) -> None:
    loaded = load_spec(path)
    assert loaded.spec.domain == path.stem
    assert len(loaded.file_hash) == 64


@pytest.mark.parametrize("path", sorted(TEMPLATES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_templates_validate(path: Path) -> None:
    spec = parse_spec(yaml.safe_load(path.read_text()), path=path)
    assert spec.type == path.stem
    example_json_schema(spec)  # compiles


def test_a_template_per_type_shipped() -> None:
    assert {p.stem for p in TEMPLATES_DIR.glob("*.yaml")} == {
        "reasoning-memory",
        "skill-demonstration",
        "api-example",
        "code-snippet",
        "conversation",
        "test-case",
        "timeseries",
        "events",
    }


def test_unknown_field_type_names_file_and_field_path(tmp_path: Path) -> None:
    p = tmp_path / "demo.yaml"
    p.write_text(yaml.safe_dump(minimal(fields={"q": {"type": "strng"}})))
    with pytest.raises(SpecError) as err:
        load_spec(p)
    msg = str(err.value)
    assert str(p) in msg
    assert "fields.q.type" in msg
    assert "'strng'" in msg and "string" in msg


def test_malformed_yaml_reports_line(tmp_path: Path) -> None:
    p = tmp_path / "demo.yaml"
    p.write_text("name: x\nfields: [unclosed\n")
    with pytest.raises(SpecError, match=r"malformed YAML at line \d+"):
        load_spec(p)


def test_missing_required_key_and_unknown_key() -> None:
    data = minimal()
    del data["description"]
    data["colour"] = "red"
    with pytest.raises(SpecError) as err:
        parse_spec(data, path="x.yaml")
    msg = str(err.value)
    assert "description: required key is missing" in msg
    assert "colour: unknown key" in msg


def test_unsafe_domain_in_spec_and_file_name(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="unsafe domain name"):
        parse_spec(minimal(domain="../etc"), path="x.yaml")
    bad = tmp_path / "Bad-Name.yaml"
    bad.write_text(yaml.safe_dump(minimal()))
    with pytest.raises(SpecError, match="unsafe domain name 'Bad-Name'"):
        load_spec(bad)


def test_file_name_must_match_domain(tmp_path: Path) -> None:
    p = tmp_path / "other.yaml"
    p.write_text(yaml.safe_dump(minimal()))
    with pytest.raises(SpecError, match=r"file is named other\.yaml"):
        load_spec(p)


@pytest.mark.parametrize("name", ["", "1abc", "Abc", "a-b", "a b", "a/b", "a" * 65, "drop table;"])
def test_unsafe_names_rejected(name: str) -> None:
    with pytest.raises(UnsafeDomainError, match="must match"):
        validate_domain_name(name)


def test_cross_references_checked() -> None:
    with pytest.raises(SpecError, match="uniqueness names unknown fields"):
        parse_spec(minimal(constraints={"uniqueness": ["nope"]}))
    with pytest.raises(SpecError, match=r"program\.outputs names unknown fields"):
        parse_spec(minimal(program={"inputs": ["q"], "outputs": ["nope"]}))
    with pytest.raises(SpecError, match="needs 'items'"):
        parse_spec(minimal(fields={"xs": {"type": "array"}}))


def test_every_string_array_and_number_is_bounded() -> None:
    spec = parse_spec(
        minimal(
            fields={
                "s": {"type": "string"},
                "n": {"type": "integer"},
                "f": {"type": "number", "min": 0, "max": 1},
                "xs": {"type": "array", "items": {"type": "string"}},
                "o": {"type": "object", "properties": {"inner": {"type": "string", "max_length": 9}}},
                "e": {"type": "string", "enum": ["a", "b"]},
            }
        )
    )
    schema = example_json_schema(spec)
    props = schema["properties"]
    assert props["s"]["maxLength"] == 300
    assert props["n"]["maximum"] == 1_000_000 and props["n"]["minimum"] == -1_000_000
    assert props["f"]["maximum"] == 1
    assert props["xs"]["maxItems"] == 5 and props["xs"]["items"]["maxLength"] == 300
    assert props["o"]["properties"]["inner"]["maxLength"] == 9
    assert props["e"]["enum"] == ["a", "b"]
    assert "$ref" not in str(schema) and "$defs" not in schema


def test_model_validates_and_arrow_types_follow_fields() -> None:
    spec = parse_spec(
        minimal(
            fields={
                "s": {"type": "string", "max_length": 5},
                "n": {"type": "integer", "min": 0, "max": 3},
                "xs": {"type": "array", "items": {"type": "integer"}},
                "ok": {"type": "boolean", "required": False},
            }
        )
    )
    model = example_model(spec)
    assert model.model_validate({"s": "abc", "n": 2, "xs": [1]}).s == "abc"
    with pytest.raises(ValueError):
        model.model_validate({"s": "toolong", "n": 2, "xs": [1]})
    with pytest.raises(ValueError):
        model.model_validate({"s": "a", "n": 9, "xs": [1]})
    arrow = example_arrow_schema(spec)
    assert arrow.field("n").type == pa.int64()
    assert arrow.field("xs").type == pa.list_(pa.int64())
    assert arrow.field("ok").nullable


def test_fields_named_like_schema_keywords_survive() -> None:
    spec = parse_spec(minimal(fields={"title": {"type": "string"}, "type": {"type": "string"}}))
    schema = example_json_schema(spec)
    assert set(schema["properties"]) == {"title", "type"}
    assert schema["required"] == ["title", "type"]


@pytest.mark.parametrize(
    "written", ["reasoning_memory", "reasoning-memory", "Reasoning_Memory ", "REASONING-MEMORY"]
)
def test_spec_type_accepts_both_spellings_and_stores_one(written: str) -> None:
    spec = parse_spec(
        {
            "name": "t",
            "version": 1,
            "domain": "demo",
            "type": written,
            "description": "d",
            "fields": {"q": {"type": "string"}},
        }
    )
    assert spec.type == "reasoning-memory"


def test_unknown_spec_type_still_names_the_choices() -> None:
    with pytest.raises(SpecError, match=r"type: got 'reasoning_memroy'.*reasoning-memory"):
        parse_spec(
            {"name": "t", "version": 1, "domain": "demo", "type": "reasoning_memroy", "description": "d",
             "fields": {"q": {"type": "string"}}},
        )  # fmt: skip
