"""Declarative spec rules (issue 13): DuckDB SQL over an example's fields and its matrix conditions,
checked before any judge; a bad expression is a spec error naming the rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from synth_pipelines.spec.loading import load_spec, parse_spec
from synth_pipelines.spec.model import SpecError
from synth_pipelines.spec.rules import failed_rules
from tests.materialize import materialize_domain, up_to

SHIPPED = Path(__file__).resolve().parent.parent / "schemas" / "api_development.yaml"
EXPECTED_METHODS = {"read": {"GET"}, "create": {"POST"}, "update": {"PUT", "PATCH"}, "delete": {"DELETE"}}


def _spec_with(rules: list[dict[str, Any]]) -> dict[str, Any]:
    data = yaml.safe_load(SHIPPED.read_text())
    data["rules"] = rules
    return data


def _example(method: str, endpoint: str = "/users/{id}") -> dict[str, Any]:
    explanation = "The call acts on the account resource named in the path."
    return {
        "task": "Remove a user account",
        "method": method,
        "endpoint": endpoint,
        "explanation": explanation,
    }


def test_rules_reject_wrong_methods_with_their_message() -> None:
    spec = load_spec(SHIPPED).spec
    examples = [_example("DELETE"), _example("GET"), _example("PATCH"), _example("GET", "/Users")]
    conditions = [
        {"operation": "delete"},
        {"operation": "delete"},
        {"operation": "update"},
        {"operation": "read"},
    ]
    assert failed_rules(spec, examples, conditions) == [
        [],
        ["a delete task must use DELETE"],
        [],
        ["the endpoint must start with a lowercase resource name, e.g. /users"],
    ]


def test_a_check_that_is_null_fails_and_a_when_that_is_null_does_not_apply() -> None:
    spec = parse_spec(
        _spec_with(
            [
                {"name": "has_task", "check": "task IS NOT NULL AND length(task) > 100"},
                {"name": "delete", "when": "operation = 'delete'", "check": "method = 'DELETE'"},
            ]
        )
    )
    # No conditions at all (an external file): the `when` is NULL, so only unconditional rules apply.
    result = failed_rules(spec, [_example("GET")], [{}])
    assert result == [["fails rule has_task: task IS NOT NULL AND length(task) > 100"]]


def test_rules_see_lists_structs_and_complexity() -> None:
    data = yaml.safe_load((SHIPPED.parent / "data_analysis.yaml").read_text())
    data["rules"] = [
        {"name": "enough_steps", "when": "complexity = 'complex'", "check": "len(steps) >= 3"},
        {"name": "messy_needs_cleaning", "when": "data_quality = 'messy'",
         "check": "list_bool_or(list_transform(steps, lambda s: s ILIKE '%clean%'))"},
    ]  # fmt: skip
    spec = parse_spec(data)
    example = {"question": "q" * 20, "dataset": "d" * 20, "approach": "a" * 25, "steps": ["load", "plot"]}
    cleaned = {**example, "steps": ["load", "clean nulls", "plot"]}
    got = failed_rules(
        spec,
        [example, example, cleaned],
        [
            {"complexity": "complex"},
            {"data_quality": "messy"},
            {"complexity": "complex", "data_quality": "messy"},
        ],
    )
    assert [len(r) for r in got] == [1, 1, 0]


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ({"name": "typo", "check": "metod = 'GET'"}, 'Referenced column "metod" not found'),
        ({"name": "syntax", "check": "method = = 'GET'"}, "syntax error"),
        ({"name": "two", "check": "true; DROP TABLE examples"}, "one expression, no ';'"),
        (
            {"name": "files", "check": "len((SELECT content FROM read_text('/etc/hostname'))) > 0"},
            "no subqueries",
        ),
        ({"name": "bad name!", "check": "true"}, "must be a word"),
    ],
)
def test_a_bad_rule_is_a_spec_error_that_names_it(rule: dict[str, str], fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec_with([rule]), path="schemas/api_development.yaml")
    message = str(caught.value)
    assert "schemas/api_development.yaml" in message and "rules.0" in message and fragment in message
    if rule["name"] != "bad name!":
        assert f"rule {rule['name']!r}" in message and "columns: task, method, endpoint" in message


def test_repeated_rule_names_are_refused() -> None:
    with pytest.raises(SpecError, match="each name must be unique"):
        parse_spec(_spec_with([{"name": "a", "check": "true"}, {"name": "a", "check": "false"}]))


def test_validated_examples_rejects_rule_breakers_before_any_judge(
    tmp_path: Path, schemas_dir: Path, scripted_backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped api_development rules over scripted replies (random enum values): every row whose
    method contradicts its operation is rejected at stage `rules` with the rule's message, and never
    judged; every accepted row obeys the rules. The requests carry the full method enum here (no
    per-cell narrowing), as a provider that ignores the schema would answer."""
    from synth_pipelines.generation import generate_rows as generation

    monkeypatch.setattr(generation, "narrowed_enums", lambda *args, **kwargs: {})
    warehouse = tmp_path / "warehouse"
    result = materialize_domain(up_to("validated_examples"), warehouse, schemas_dir, target=24)
    assert result.success
    rows = duckdb.sql(
        "select conditions_json, example_json, fail_stage, fail_reasons, len(validator_scores) as judged "
        f"from read_parquet('{warehouse}/rejected_examples/*/*.parquet')"
    ).fetchall()
    by_rule = [r for r in rows if r[2] == "rules" and any("task must use" in m for m in r[3])]
    assert by_rule, "the scripted replies include wrong methods; the rules must catch some"
    for conditions, example, _, _reasons, judged in by_rule:
        operation, method = json.loads(conditions)["operation"], json.loads(example)["method"]
        assert method not in EXPECTED_METHODS[operation]
        assert judged == 0  # rejected before any judge call
    accepted = duckdb.sql(
        "select conditions_json, example_json from "
        f"read_parquet('{warehouse}/validated_examples/*/*.parquet')"
    ).fetchall()
    for conditions, example in accepted:
        assert json.loads(example)["method"] in EXPECTED_METHODS[json.loads(conditions)["operation"]]


def test_outside_rows_meet_the_spec_rules_too() -> None:
    """`synth validate FILE`: conditions come from a `conditions` object or dimension columns."""
    from synth_pipelines.validation.external import validate_rows

    spec = load_spec(SHIPPED).spec.with_panel(None, "none")[0]
    rows = [
        {**_example("GET"), "conditions": {"operation": "delete"}},
        {**_example("DELETE"), "operation": "delete"},
        _example("GET", "/accounts/{id}"),  # no conditions: the method rules do not apply
    ]
    result = validate_rows(spec, rows, None)
    assert [r["passed"] for r in result["rows"]] == [False, True, True]
    assert result["rows"][0]["reasons"] == ["a delete task must use DELETE"]


def test_rules_narrow_the_enum_offered_to_the_generator_per_cell() -> None:
    """A rule decided by one enum field, for the cell's conditions, narrows that field in the
    schema sent for the cell; a rule that also needs other fields, or that would allow nothing,
    leaves it open. The reply is still checked against the full model."""
    from synth_pipelines.generation.generate_rows import PlannedItem, item_schema
    from synth_pipelines.spec.rules import narrowed_enums

    spec = load_spec(SHIPPED).spec
    assert narrowed_enums(spec, {"operation": "read", "auth": "oauth2"}) == {"method": ["GET"]}
    assert narrowed_enums(spec, {"operation": "update", "auth": "api_key"}) == {"method": ["PUT", "PATCH"]}
    assert narrowed_enums(spec, {}) == {}  # no operation: no rule applies
    mixed = parse_spec(_spec_with([
        {"name": "a", "when": "operation = 'read'", "check": "method = 'GET' AND endpoint LIKE '/%'"},
    ]))  # fmt: skip
    assert narrowed_enums(mixed, {"operation": "read"}) == {}  # the check needs endpoint too
    impossible = parse_spec(_spec_with([
        {"name": "a", "check": "method = 'GET'"}, {"name": "b", "check": "method = 'POST'"},
    ]))  # fmt: skip
    assert narrowed_enums(impossible, {"operation": "read"}) == {}  # nothing would pass: left open
    item = PlannedItem(
        example_id="e1", cell_id="c1", seed_id="s1", problem="Fetch a user", complexity="simple",
        conditions={"operation": "delete", "auth": "oauth2"}, seed=1, sample_index=0,
    )  # fmt: skip
    schema = item_schema(spec, item)
    assert schema["properties"]["method"]["enum"] == ["DELETE"]
    assert schema["properties"]["endpoint"] == item_schema(spec, item)["properties"]["endpoint"]
    from synth_pipelines.spec.example_schema import example_json_schema

    assert example_json_schema(spec)["properties"]["method"]["enum"] == [
        "GET",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
    ]
