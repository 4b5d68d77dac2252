"""Tier 2: pure logic — matrix targets, rule checks, dedup keys, consensus math, diversity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synth_pipelines.generation.matrix import build_matrix, feedback_extras, largest_remainder
from synth_pipelines.generation.techniques import plan_technique_rows
from synth_pipelines.spec.loading import parse_spec
from synth_pipelines.validation.consensus import JudgeScore, outcome_decided, weighted_mean
from synth_pipelines.validation.diversity import distinct_n, mean_pairwise_cosine_distance
from synth_pipelines.validation.rule_checks import (
    dedup_key,
    degenerate_reasons,
    pii_reasons,
    rule_check,
)
from synth_pipelines.validation.text_checks import repetition_loop


def spec_with(**over):
    base = {
        "name": "t",
        "version": 1,
        "domain": "demo",
        "type": "api-example",
        "description": "d",
        "fields": {"q": {"type": "string", "max_length": 200}, "a": {"type": "string", "max_length": 200}},
        "matrix": {
            "dimensions": {"size": ["s", "l"], "quality": ["clean", "messy"]},
            "complexity": {"simple": 0.3, "medium": 0.5, "complex": 0.2},
        },
        "target_count": 20,
    }
    base.update(over)
    return parse_spec(base)


def test_largest_remainder_sums_exactly() -> None:
    for total in (0, 1, 7, 20, 101):
        parts = largest_remainder(total, [0.3, 0.5, 0.2])
        assert sum(parts) == total
    assert largest_remainder(10, [0.3, 0.5, 0.2]) == [3, 5, 2]


def test_matrix_is_cartesian_product_with_complexity_distribution() -> None:
    spec = spec_with()
    cells = build_matrix(spec, [("s1", "First seed problem"), ("s2", "Second seed problem")])
    assert len(cells) == 2 * 2 * 3
    assert len({c.cell_id for c in cells}) == len(cells)
    assert sum(c.target for c in cells) == 20
    by_level = {
        lvl: sum(c.target for c in cells if c.complexity == lvl) for lvl in ("simple", "medium", "complex")
    }
    assert by_level == {"simple": 6, "medium": 10, "complex": 4}
    assert {c.seed_id for c in cells} == {"s1", "s2"}


def test_matrix_is_deterministic_and_target_override() -> None:
    spec = spec_with()
    assert build_matrix(spec, [("s1", "First seed problem")]) == build_matrix(
        spec, [("s1", "First seed problem")]
    )
    assert sum(c.target for c in build_matrix(spec, [("s1", "First seed problem")], target_count=5)) == 5


def test_weak_cells_get_more_and_nothing_else_shrinks() -> None:
    spec = spec_with()
    cells = build_matrix(spec, [("s1", "First seed problem")])
    weak = [cells[0].cell_id, cells[1].cell_id]
    extras = feedback_extras(spec, [*weak, "c_not_a_cell"])
    assert set(extras) == set(weak) and all(n >= 1 for n in extras.values())
    boosted = {
        c.cell_id: c
        for c in plan_technique_rows(spec, build_matrix(spec, [("s1", "First seed problem")]), extras)
    }
    for c in cells:
        assert boosted[c.cell_id].target == c.target + extras.get(c.cell_id, 0)
        assert boosted[c.cell_id].weak == (c.cell_id in weak)
    assert sum(c.target for c in boosted.values()) == 20 + sum(extras.values())


def test_rule_check_compliance_and_degenerate() -> None:
    spec = spec_with()
    ok, reasons = rule_check(
        spec, '{"q": "How do I list invoices?", "a": "Call GET /invoices with a filter."}'
    )
    assert ok is not None and reasons == []
    bad, reasons = rule_check(spec, '{"q": "x"}')
    assert bad is None and reasons[0].startswith("schema: a")
    runaway = (
        '{"q": "Order '
        + "3141592653589793238462643383279502884197"
        + '", "a": "The answer is '
        + "a" * 30
        + '"}'
    )
    _, reasons = rule_check(spec, runaway)
    assert any("digit run" in r for r in reasons) and any("repeated-character" in r for r in reasons)
    # A 19-digit id, a timestamp and aligned columns are real text, not runaways.
    aligned = (
        "NAME                 READY   STATUS    RESTARTS   AGE\\n"
        "api-7d9f8b6c5-x2k4q   1/1     Running   0          3d"
    )
    _, reasons = rule_check(
        spec, '{"q": "Order 1234567890123456789 at 1700000000000", "a": "' + aligned + '"}'
    )
    assert reasons == []
    _, reasons = rule_check(spec, '{"q": "n/a", "a": "fine answer here"}')
    assert any("boilerplate" in r for r in reasons)


def test_repetition_and_echo() -> None:
    assert repetition_loop("the cat sat " * 10) is not None
    assert repetition_loop("a quick brown fox jumps over the lazy dog today") is None
    # Tables repeat their column values; that is not a loop.
    assert repetition_loop("root 1 0.0 S\nroot 2 0.0 S\nroot 3 0.1 R\nroot 4 0.0 S") is None
    prompt = "List the invoices of a customer for the current month please"
    reasons = degenerate_reasons(
        {"q": "list the invoices of a customer for the current month"}, prompt_text=prompt
    )
    assert any("echoes the prompt" in r for r in reasons)


def test_a_value_that_repeats_the_generation_prompts_scaffolding_is_rejected() -> None:
    """Seen on domains written for the check (sql_review, 2026-12-06): SmolLM2 filled a query field
    with the prompt's own lines, and nothing else caught it."""
    from synth_pipelines.generation.generate_rows import PlannedItem, build_messages
    from synth_pipelines.spec.text import normalize_text
    from synth_pipelines.validation.rule_checks import scaffold_patterns

    spec = spec_with()
    cell = {"size": "s", "quality": "messy"}
    leaked = (
        '{"q": "test1, row1234567890,\\nConditions: quality=messy, size=s, Complexity: simple, '
        'Fields to fill: a, Query:", "a": "Add an index on the customer column first."}'
    )
    _, reasons = rule_check(spec, leaked, prompt_text="Invoices load slowly", conditions=cell)
    assert reasons == ["q: repeats the generation prompt's scaffolding"]
    # An external row has no prompt: nothing to have echoed.
    assert rule_check(spec, leaked)[1] == []
    # Only this row's own rendering counts, and the bare labels a real text may use do not.
    _, reasons = rule_check(spec, leaked, prompt_text="Invoices load slowly", conditions={"quality": "clean"})
    assert any("scaffolding" in r for r in reasons)  # still "Fields to fill: a"
    fine = (
        '{"q": "Ticket 42. Complexity: medium. Conditions: quality=unknown until the audit.", '
        '"a": "The fields to fill in the form are name and email; a good example follows."}'
    )
    assert rule_check(spec, fine, prompt_text="Invoices load slowly", conditions=cell)[1] == []
    # The patterns are the prompt's: each one is found in the prompt the generator was sent.
    item = PlannedItem(
        example_id="e", cell_id="c", seed_id="s", problem="Invoices load slowly", conditions=cell,
        complexity="simple", sample_index=0, seed=1,
    )  # fmt: skip
    with_hint = spec_with(hints={"examples": [{"q": "How do I page?", "a": "Use a cursor."}]})
    prompt = normalize_text(build_messages(with_hint, item)[1].content)
    assert all(p.search(prompt) for p in scaffold_patterns(list(spec.fields), cell))


def test_a_value_that_names_the_domains_identifier_repeats_the_system_prompt() -> None:
    """Seen on the git_recovery, unit_conversion and sql_review runs (2026-12-06): SmolLM2 wrote the
    domain's identifier from its system prompt into a value (``"commands": ["git_recovery", ...]``,
    ``.../unit_conversion.json``). The snake_case identifier is the prompt's; the words are not."""
    from synth_pipelines.generation.generate_rows import PlannedItem, build_messages
    from synth_pipelines.spec.text import normalize_text
    from synth_pipelines.validation.rule_checks import SCAFFOLD_PHRASES, scaffold_patterns

    spec = spec_with(domain="git_recovery")
    cell = {"size": "s", "quality": "messy"}

    def reasons(q: str, **kwargs: object) -> list[str]:
        example = json.dumps({"q": q, "a": "Reset the branch to the commit before the merge."})
        return rule_check(spec, example, **kwargs)[1]  # type: ignore[arg-type]

    pipeline = {"prompt_text": "Undo a merge", "conditions": cell}
    for leaked in ("git_recovery", "see ./GIT_RECOVERY.json for the list", "git_recovery.remote: local"):
        assert reasons(leaked, **pipeline) == ["q: repeats the generation prompt's scaffolding"], leaked
    for fine in ("git recovery after a bad rebase", "a git-recovery cheat sheet", "my_git_recovery_tool"):
        assert reasons(fine, **pipeline) == [], fine
    assert reasons("git_recovery") == []  # an external row was never sent the prompt
    # A one-word domain is an ordinary word: never taken for the identifier.
    assert scaffold_patterns(["q", "a"], cell, "logs") == scaffold_patterns(["q", "a"], cell)
    # The pattern is the prompt's: the system message the generator was sent names the domain so.
    item = PlannedItem(
        example_id="e", cell_id="c", seed_id="s", problem="Undo a merge", conditions=cell,
        complexity="simple", sample_index=0, seed=1,
    )  # fmt: skip
    system = normalize_text(build_messages(spec, item)[0].content)
    [domain_pattern] = scaffold_patterns([], None, spec.domain)[len(SCAFFOLD_PHRASES) :]
    assert domain_pattern.search(system)


def test_a_value_that_starts_with_a_comma_is_the_tail_of_other_text() -> None:
    """Seen on unit_conversion, git_recovery and cron_failures (2026-12-06): ``",170.8395,2,"``,
    ``", in the context of git, ..."``; no window of the two real-text corpora starts so."""
    from synth_pipelines.validation.text_checks import degenerate_text

    tail = "starts with a comma (the tail of other text, not a value)"
    assert tail in degenerate_text(",170.8395,2,")
    assert tail in degenerate_text("  \n, in the context of git, it means the branch moved")
    for fine in ("1,574.83 kg", "a, b and c", ";; shell case arm", "x = [1,\n 2]"):
        assert tail not in degenerate_text(fine), fine


def test_an_arrays_items_are_checked_as_values_of_their_own() -> None:
    """Seen on the skill-demonstration template (2026-12-06, a spec not used to write the checks):
    ``steps`` of ``["1, 3; 0.5,", "\\n    ", ...]`` passed: on the flattened array the comma
    check sees only the first item."""
    from synth_pipelines.validation.rule_checks import degenerate_reasons

    reasons = degenerate_reasons({"steps": ["open the file", "\n    ", "TODO", ", then save it"]})
    # The blank item 2 is held to the spec's bound (below); TODO in a list is left alone.
    assert reasons == ["steps: item 4 starts with a comma (the tail of other text)"]
    filled = {"steps": ["open the file", "add 1,2 to the list", "save it"], "tags": ["a", "b"], "n": [1, 2]}
    assert degenerate_reasons(filled) == []


def test_whitespace_does_not_count_toward_the_specs_min_length() -> None:
    """The skill-demonstration template's steps (``min_length: 5``) held ``"\\n    "`` and
    ``"\\n  #1\\n    "``; without a bound a string must hold a character, as the schema says."""
    import json

    from synth_pipelines.validation.rule_checks import rule_check

    spec = spec_with(
        fields={
            "goal": {"type": "string", "min_length": 5, "max_length": 80},
            "steps": {"type": "array", "items": {"type": "string", "min_length": 5, "max_length": 80}},
            "lines": {"type": "array", "items": {"type": "string", "max_length": 80}},
        }
    )
    row = {"goal": "   ok   ", "steps": ["open the file", "\n    ", "\n  #1\n    "], "lines": ["x = 1", "  "]}
    _, reasons = rule_check(spec, json.dumps(row))
    assert reasons == [
        "goal: shorter than min_length 5 without its whitespace",
        "steps: item 2 shorter than min_length 5 without its whitespace",
        "steps: item 3 shorter than min_length 5 without its whitespace",
        "lines: item 2 shorter than min_length 1 without its whitespace",
    ]
    good = {
        "goal": "ship it",
        "steps": ["open the file", "save it"],
        "lines": ["x = 1", "    return x", "y = 2"],
    }
    assert rule_check(spec, json.dumps(good))[1] == []


def test_a_value_the_spec_offers_in_an_enum_is_not_boilerplate() -> None:
    """``none`` is boilerplate in free text but an answer where the spec's enum offers it (a
    severity of none, low, high), for a field and for an array's items alike."""
    import json

    from synth_pipelines.validation.rule_checks import rule_check

    spec = spec_with(
        fields={
            "q": {"type": "string", "max_length": 200},
            "severity": {"type": "string", "enum": ["none", "low", "high"]},
            "flags": {"type": "array", "items": {"type": "string", "enum": ["none", "tbd", "ok"]}},
            "note": {"type": "string", "max_length": 50},
        }
    )
    row = {"q": "is the log rotated weekly?", "severity": "none", "flags": ["none"], "note": "none"}
    _, reasons = rule_check(spec, json.dumps(row))
    assert reasons == ["note: empty or boilerplate value"]


def test_pii_detection() -> None:
    assert pii_reasons({"a": "mail bob@example.com"}) == ["contains email"]
    assert "contains ip_address" in pii_reasons({"a": "host 10.1.2.3"})
    assert pii_reasons({"a": "nothing personal"}) == []


def test_dedup_key_normalizes_whitespace_and_case() -> None:
    spec = spec_with(constraints={"uniqueness": ["q"]})
    assert dedup_key(spec, {"q": "Hello  World", "a": "x"}) == dedup_key(spec, {"q": "hello world", "a": "y"})
    assert dedup_key(spec, {"q": "hello", "a": "x"}) != dedup_key(spec, {"q": "bye", "a": "x"})


def test_weighted_consensus_and_early_decision() -> None:
    a = JudgeScore(model="a", weight=2.0, score=1.0)
    b = JudgeScore(model="b", weight=1.0, score=0.25)
    assert weighted_mean([a, b]) == pytest.approx(0.75)
    assert weighted_mean([JudgeScore(model="x", weight=1.0, error="bad")]) is None
    # After a=1.0 (w=2), the remaining w=1 cannot pull it below 0.6: decided.
    assert outcome_decided([a], 1.0, 0.6)
    # After a=1.0 (w=2) the remaining w=1 could pull it to 0.67 < 0.75: undecided.
    assert not outcome_decided([a], 1.0, 0.75)
    low = JudgeScore(model="c", weight=2.0, score=0.0)
    assert outcome_decided([low], 1.0, 0.75)  # best case 0.33 < 0.75


def test_mean_pairwise_cosine_distance_matches_bruteforce() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    n = len(x)
    brute = 1 - (sims.sum() - np.trace(sims)) / (n * (n - 1))
    assert mean_pairwise_cosine_distance(x) == pytest.approx(float(brute), abs=1e-5)
    same = np.repeat(x[:1], 5, axis=0)
    assert mean_pairwise_cosine_distance(same) == pytest.approx(0.0, abs=1e-6)
    assert mean_pairwise_cosine_distance(x[:1]) is None


def test_distinct_n() -> None:
    assert distinct_n(["a b c", "a b c"], 1) == pytest.approx(0.5)
    assert distinct_n(["a b", "c d"], 2) == 1.0


def test_placeholders_are_degenerate_but_path_params_templates_and_markup_are_not() -> None:
    reasons = degenerate_reasons(
        {
            "a": "{{data_quality}}",
            "b": "<img src='x.png'>",
            "c": "GET /users/{id}",
            "d": "Dear [Customer Name], your order ships today.",
            "e": "{% for x in rows %}{{ x }}{% endfor %}",
        }
    )
    assert reasons == ["a: unfilled template placeholder", "d: unfilled template placeholder"]


def test_random_looking_tokens_are_degenerate_but_identifiers_and_ids_are_not() -> None:
    """What a tiny model writes when it derails (seen from SmolLM2 through llama.cpp's server) is
    rejected before any judge; camelCase names, acronyms, UUIDs, paths and snake_case are not."""
    garbage = "⃖x1345₉PATCH_MATCH⃖x7D-FKWLZJYUHJGtCzQ/BFFIwZSHEZXDyWRNnEiOgVhjvRl1A43fqTm8AwP,11"
    reasons = degenerate_reasons(
        {
            "task": garbage,
            "b": "Call getUserAccountSettingsById2024v2 then HTTPRequestXMLParserURLEncoder",
            "c": "id 550e8400-e29b-41d4-a716-44665544abcd at /users/{id}/orders/{order_id}/items",
            "d": "creating_new_user_account_with_email_and_token_12345",
        }
    )
    assert reasons == ["task: random-looking token (garbage, a key or a token)"]


def test_seeds_of_known_operations_never_land_in_a_cell_of_another_operation() -> None:
    """Tagged seeds and seeds that name a dimension value go only to cells with those values; a cell
    no seed fits gets a derived problem stating its own conditions (never a seed written for others)."""
    from pathlib import Path

    from synth_pipelines.generation.matrix import seed_fit
    from synth_pipelines.spec.loading import load_spec

    spec = load_spec(Path(__file__).resolve().parent.parent / "schemas" / "api_development.yaml").spec
    seeds = [(f"s{i}", text) for i, text in enumerate(spec.seed_texts())]
    operation_of = {sid: seed_fit(spec, text)[0]["operation"] for sid, text in seeds}
    cells = build_matrix(spec, seeds, target_count=64)
    assert {c.conditions["operation"] for c in cells} == {"read", "create", "update", "delete"}
    for cell in cells:
        assert cell.seed_match == "tagged"
        assert cell.conditions["operation"] in operation_of[cell.seed_id], cell
    # Untagged seeds: the values they name decide; one naming nothing fits anywhere.
    untagged = spec.model_copy(update={"seed_problems": ["Delete a stale webhook", "Rotate the signing key"]})
    rows = build_matrix(untagged, [("d", "Delete a stale webhook"), ("n", "Rotate the signing key")])
    assert all(r.seed_id == "n" for r in rows if r.conditions["operation"] != "delete")
    assert {r.seed_match for r in rows if r.seed_id == "d"} == {"mentions"}
    # No seed fits the read cells: they get a derived problem naming their conditions.
    only_delete = spec.model_copy(update={"seed_problems": ["Delete a stale webhook"]})
    rows = build_matrix(only_delete, [("d", "Delete a stale webhook")])
    for row in rows:
        if row.conditions["operation"] == "delete":
            assert row.seed_match == "mentions" and row.problem is None
        else:
            assert row.seed_match == "derived" and row.problem is not None
            assert f"operation {row.conditions['operation']}" in row.problem and "Delete" not in row.problem


def test_a_seed_tag_naming_an_unknown_dimension_or_value_is_a_spec_error() -> None:
    from pathlib import Path

    import yaml

    from synth_pipelines.spec.model import SpecError

    data = yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "schemas" / "api_development.yaml").read_text()
    )
    data["seed_problems"] = [{"problem": "Delete a token", "conditions": {"operation": "remove"}}]
    with pytest.raises(SpecError, match=r"seed_problems.0.conditions.operation: \['remove'\] not among"):
        parse_spec(data)
    data["seed_problems"] = [{"problem": "Delete a token", "conditions": {"verb": "delete"}}]
    with pytest.raises(SpecError, match="names dimension 'verb'"):
        parse_spec(data)
