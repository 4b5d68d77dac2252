"""What the judges see, when they are not called, and the labelled benchmark they are measured on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from synth_pipelines.llm.config import PANEL_MIN_KAPPA_GAIN, PanelCalibration, load_profile
from synth_pipelines.llm.factory import build_client
from synth_pipelines.spec.loading import load_spec
from synth_pipelines.validation import gates
from synth_pipelines.validation.apply_gates import validate_examples
from synth_pipelines.validation.calibration import (
    GateScore,
    best_threshold,
    load_labelled,
    lodo_decisions,
    resolve_thresholds,
    score_rows,
)
from synth_pipelines.validation.consensus import judge_criteria, judge_messages
from synth_pipelines.validation.consistency import field_agreement
from synth_pipelines.validation.text_checks import degenerate_text
from synth_pipelines.warehouse.tables import RAW_GENERATIONS
from tests.scripted import ScriptedBackend, scripted_profile

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "tests" / "data" / "judge_bench"
API_SPEC = REPO / "schemas" / "api_development.yaml"
EXAMPLE = {
    "task": "Remove the expired token of user 7",
    "method": "DELETE",
    "endpoint": "/users/{id}/tokens/{token}",
    "explanation": "DELETE removes the token resource; later calls with it get 401 Unauthorized.",
}


def test_the_judge_prompt_carries_problem_conditions_fields_and_the_consistency_criterion() -> None:
    spec = load_spec(API_SPEC).spec
    _, user = judge_messages(
        spec, "Delete an expired API token", EXAMPLE, conditions={"operation": "delete", "auth": "oauth2"}
    )
    text = user.content
    assert "Problem: Delete an expired API token" in text
    assert "Conditions: auth=oauth2, operation=delete" in text
    # The field guide: every field with its meaning and allowed values.
    assert "- method (string; one of GET, POST, PUT, PATCH, DELETE): HTTP method" in text
    assert "- explanation (string; at most 200 chars): why this call solves the task" in text
    assert "consistency" in judge_criteria(spec) and "consistency: the fields agree" in text
    assert json.dumps(EXAMPLE, ensure_ascii=False) in text


def test_a_row_without_a_problem_is_judged_against_the_spec() -> None:
    spec = load_spec(API_SPEC).spec
    _, user = judge_messages(spec, "", EXAMPLE)
    assert "Problem: none given; judge the example against the task and the field meanings." in user.content
    assert "Conditions:" not in user.content
    assert spec.description.split()[0] in user.content


def test_consistency_is_scored_once_next_to_the_specs_and_extra_criteria() -> None:
    spec = load_spec(API_SPEC).spec
    assert judge_criteria(spec, ["hard_but_well_posed", "consistency"]) == [
        *spec.validation.criteria,
        "hard_but_well_posed",
        "consistency",
    ]


def test_an_uninformative_calibration_turns_an_auto_panel_off_and_says_why() -> None:
    zero = PanelCalibration(consensus_threshold=0.0)
    assert "threshold 0" in (zero.panel_skip_reason("local") or "")
    small = PanelCalibration(consensus_threshold=0.4, panel_kappa_gain=PANEL_MIN_KAPPA_GAIN / 2)
    assert "below the" in (small.panel_skip_reason("p") or "")
    useful = PanelCalibration(consensus_threshold=0.4, panel_kappa_gain=0.2)
    assert useful.panel_skip_reason("p") is None
    spec = load_spec(API_SPEC).spec
    off, sources = spec.with_panel(0.0, "local", skip_panel=zero.panel_skip_reason("local"))
    assert not off.validation.judges_run and sources["panel"].startswith("auto: skipped, the calibration")
    on, sources = spec.with_panel(0.4, "p", skip_panel=useful.panel_skip_reason("p"))
    assert on.validation.judges_run and sources["panel"] == "auto: called for profile 'p'"
    # A spec that sets its own consensus threshold asked for a panel: it runs.
    fixed = spec.model_copy(
        update={"validation": spec.validation.model_copy(update={"consensus_threshold": 0.5})}
    )
    forced, sources = fixed.with_panel(0.0, "local", skip_panel="uninformative")
    assert forced.validation.judges_run and sources["panel"] == "on: the spec sets consensus_threshold"
    # The shipped embedded profile's calibration found its panel uninformative.
    local_spec, _ = resolve_thresholds(spec, load_profile("local"))
    assert not local_spec.validation.judges_run


def _raw(examples: list[dict]) -> pa.Table:
    rows = [
        {name: None for name in RAW_GENERATIONS.names}
        | {
            "example_id": f"e{i}",
            "status": "ok",
            "problem": "Delete an expired API token",
            "conditions_json": json.dumps({"operation": "delete", "auth": "api_key"}),
            "complexity": "simple",
            "example_json": json.dumps({**example, "task": f"{example['task']} number {i}"}),
        }
        for i, example in enumerate(examples)
    ]
    return pa.Table.from_pylist(rows, schema=RAW_GENERATIONS)


def test_a_skipped_panel_calls_no_judge_and_the_check_says_it_measured_nothing() -> None:
    spec = load_spec(API_SPEC).spec.with_panel(
        0.0, "local", skip_panel="uninformative", field_agreement=-1.0
    )[0]
    profile = scripted_profile()
    judges = {n: ScriptedBackend(n, judge_score=1) for n in profile.models}
    client = build_client(profile, None)
    client.backends.update(judges)
    wrong = {**EXAMPLE, "method": "GET"}  # the rules still run: a delete task must use DELETE
    outcome = validate_examples(spec, _raw([EXAMPLE, EXAMPLE | {"endpoint": "/tokens/{id}"}, wrong]), client,
                                list(profile.roles.validators))  # fmt: skip
    assert sum(b.calls for b in judges.values()) == 0
    assert outcome.accepted.num_rows == 2 and outcome.stage_counts == {"rules": 1}
    accepted = outcome.accepted.to_pylist()
    assert [r["consensus"] for r in accepted] == [None, None]
    assert all(r["validator_scores"] == [] and r["validators_skipped"] == 2 for r in accepted)
    gate = gates.consensus_pass_rate(spec, accepted, outcome.rejected.to_pylist())
    assert gate.passed and gate.not_measured and gate.detail["judged"] == 0
    assert "not measured" in gate.describe("consensus pass rate")
    # The same rows with the panel on: both judges score them (score 1 of 5: all rejected).
    on = load_spec(API_SPEC).spec.with_panel(0.5, "p", field_agreement=-1.0)[0]
    judged = validate_examples(on, _raw([EXAMPLE]), client, list(profile.roles.validators), early_stop=False)
    assert sum(b.calls for b in judges.values()) == 2 and judged.stage_counts == {"consensus": 1}


def test_leave_one_domain_out_takes_each_threshold_from_the_other_domains() -> None:
    def scores(values: list[float], labels: list[bool]) -> list[GateScore]:
        return [
            GateScore(good=g, rules_ok=True, rule_reasons=[], consensus=v)
            for v, g in zip(values, labels, strict=True)
        ]

    # Domains a and b separate at 0.5; c's values are all above 0.5, so its own best threshold
    # (0.8) is never used for it: held out, it gets what a and b agree on.
    gates_by_domain = {
        "a": scores([0.2, 0.3, 0.7, 0.9], [False, False, True, True]),
        "b": scores([0.1, 0.4, 0.6, 0.8], [False, False, True, True]),
        "c": scores([0.6, 0.7, 0.8, 0.9], [False, False, True, True]),
    }
    values = {d: [s.consensus for s in v] for d, v in gates_by_domain.items()}
    decided = lodo_decisions(gates_by_domain, values)
    assert decided["c"] == [True, True, True, True]  # at a and b's threshold (0.6 or 0.7)
    # Held out, a is decided at the threshold b and c agree on best (0.8: c's bad rows reach 0.7).
    assert best_threshold([*gates_by_domain["b"], *gates_by_domain["c"]]).threshold == 0.8
    assert decided["a"] == [False, False, False, True]


def test_the_judge_benchmark_has_six_balanced_domains_of_forty_rows() -> None:
    files = sorted(BENCH.glob("*.jsonl"))
    assert len(files) >= 6
    for file in files:
        rows = load_labelled(file)
        assert len(rows) >= 40, file.name
        assert sum(r.label == "good" for r in rows) == len(rows) // 2, file.name
        assert all(r.problem and r.conditions for r in rows), file.name
        assert load_spec(file.with_suffix(".yaml")).spec.domain == file.stem


@pytest.mark.parametrize("form", ["pipeline", "external"])
def test_no_good_row_of_any_benchmark_set_is_rejected_before_the_judges(form: str) -> None:
    """Schema, spec rules and the built-in degenerate-text checks pass every good row, in both forms."""
    rejected = []
    for file in sorted(BENCH.glob("*.jsonl")):
        spec = load_spec(file.with_suffix(".yaml")).spec
        rows = load_labelled(file)
        if form == "external":
            rows = [r.model_copy(update={"problem": "", "conditions": {}}) for r in rows]
        for row, score in zip(rows, score_rows(spec, rows, None, []), strict=True):
            if row.label == "good" and not score.rules_ok:
                rejected.append((file.stem, row.example, score.rule_reasons))
    assert rejected == []


def test_a_sentence_ending_in_a_phrasal_verb_is_not_truncated() -> None:
    assert degenerate_text("I lost my phone and can't get the 2FA code to sign in") == []
    assert degenerate_text("the reset link never arrives when I try to log on") == []
    assert degenerate_text("The report lists every order that was shipped to the") == ["cut off mid-sentence"]


def _topic_embed(texts: list[str]) -> np.ndarray:
    """Unit vectors by topic: texts about tokens point one way, anything else the other."""
    return np.array([[1.0, 0.0] if "token" in t.lower() else [0.0, 1.0] for t in texts])


def test_fields_that_talk_about_different_things_are_rejected_before_any_judge() -> None:
    spec = load_spec(API_SPEC).spec.with_panel(0.5, "p", field_agreement=0.34)[0]
    assert spec.validation.min_field_agreement == 0.34
    profile = scripted_profile()
    judges = {n: ScriptedBackend(n, judge_score=5) for n in profile.models}
    client = build_client(profile, None)
    client.backends.update(judges)
    off = {**EXAMPLE, "explanation": "Bake the cake at 180 degrees for forty minutes until golden."}
    outcome = validate_examples(
        spec,
        _raw([EXAMPLE, off]),
        client,
        list(profile.roles.validators),
        embed=_topic_embed,
        early_stop=False,
    )
    assert outcome.stage_counts == {"inconsistent_fields": 1}
    (rejected,) = outcome.rejected.to_pylist()
    assert rejected["example_id"] == "e1"
    assert rejected["fail_reasons"] == [
        "fields disagree: endpoint and explanation have similarity 0.000, below 0.340"
    ]
    assert sum(b.calls for b in judges.values()) == 2  # only the consistent row reached the panel
    with pytest.raises(ValueError, match="no embed function"):
        validate_examples(spec, _raw([EXAMPLE]), client, list(profile.roles.validators))


def test_field_agreement_compares_only_text_long_enough_to_carry_a_topic() -> None:
    short = field_agreement([{"method": "GET", "task": "List all the invoices of a customer"}], _topic_embed)
    assert short[0].score == 1.0 and short[0].fields is None
    (pair,) = field_agreement(
        [{"a": "token rotation every ninety days", "b": "the tokens expire hourly"}], _topic_embed
    )
    assert pair.score == pytest.approx(1.0) and pair.fields == ("a", "b")


def test_a_skipped_panel_with_nothing_accepted_still_fails_the_check() -> None:
    spec = load_spec(API_SPEC).spec.with_panel(0.0, "local", skip_panel="uninformative")[0]
    gate = gates.consensus_pass_rate(spec, [], [{"fail_stage": "off_topic"}] * 8)
    assert not gate.passed and gate.detail["accepted_unjudged"] == 0
    assert gate.describe("consensus pass rate").endswith("no example passed the gates before it: FAILS")
    from synth_pipelines.runner import check_failure_line

    line = check_failure_line(
        "consensus_pass_rate", {"measured": 0.0, "threshold": 0.85, "not_measured": "x"}
    )
    assert line.startswith("consensus_pass_rate failed, not measured: x")


def test_generated_seeds_are_asked_per_combination_and_serve_only_their_cells() -> None:
    """A spec without seed_problems: the generator is asked once per combination of conditions,
    with the conditions in the prompt, and the matrix gives each seed only to cells of its
    combination (seed_match "asked")."""
    from synth_pipelines.generation.matrix import asked_conditions, build_matrix
    from synth_pipelines.generation.seeds import build_seed_problems

    spec = load_spec(API_SPEC).spec
    spec = spec.model_copy(update={"seed_problems": []})
    profile = scripted_profile()
    backends = {n: ScriptedBackend(n) for n in profile.models}
    client = build_client(profile, None)
    client.backends.update(backends)
    seeds, failures = build_seed_problems(spec, client, count=8)
    assert failures == []
    prompts = [r.messages[-1].content for r in backends["gen-a"].requests]
    combos = spec.matrix.combinations()
    assert len(combos) == 8 and len(prompts) == 8  # one request per combination, one seed each
    for combo in combos:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(combo.items()))
        assert sum(f"Conditions: {wanted}\n" in p for p in prompts) == 1
    rows = [s.model_dump() for s in seeds]
    asked = asked_conditions(rows)
    assert len(asked) == len(seeds) >= 6  # scripted replies may repeat a problem; repeats are dropped
    cells = build_matrix(spec, [(s.seed_id, s.problem) for s in seeds], target_count=64, asked=asked)
    for cell in cells:
        if cell.seed_match == "asked":
            assert asked[cell.seed_id] == cell.conditions, cell
        else:
            assert cell.seed_match == "derived" and cell.problem is not None


def test_external_rows_get_the_field_gate_and_no_judge_when_the_panel_is_off() -> None:
    from synth_pipelines.validation.external import validate_rows

    spec = load_spec(API_SPEC).spec.with_panel(
        0.0, "local", skip_panel="uninformative", field_agreement=0.34
    )[0]
    profile = scripted_profile()
    judges = {n: ScriptedBackend(n, judge_score=5) for n in profile.models}
    client = build_client(profile, None)
    client.backends.update(judges)
    off = {
        **EXAMPLE,
        "task": "Remove a stale token now",
        "explanation": "Preheat the oven and bake the bread.",
    }
    report = validate_rows(spec, [EXAMPLE, off], client, _topic_embed)
    first, second = report["rows"]
    assert first["passed"] and first["panel"].startswith("skipped")
    assert not second["passed"] and second["stage"] == "inconsistent_fields"
    assert sum(b.calls for b in judges.values()) == 0
    # With the panel on, the outside row is judged without a problem: against the spec.
    on = load_spec(API_SPEC).spec.with_panel(0.5, "p", field_agreement=0.34)[0]
    validate_rows(on, [EXAMPLE], client, _topic_embed)
    asked = judges["judge-a"].requests[-1].messages[-1].content
    assert "Problem: none given" in asked


def test_the_plan_counts_no_judge_call_when_the_panel_is_skipped(tmp_path: Path) -> None:
    from synth_pipelines.planning.forecast import plan_domain
    from synth_pipelines.resources import LLMResource
    from synth_pipelines.warehouse.storage import Warehouse

    wh = Warehouse(tmp_path / "warehouse")
    client = LLMResource(profile="local").client(wh.cache_path)
    plan = plan_domain(load_spec(API_SPEC).spec, wh, client, target_count=8)
    line = next(a for a in plan.assets if a.asset == "validated_examples")
    assert line.units == 8 and line.calls == 0 and line.cost_usd == 0.0
    assert line.basis.startswith("validator panel skipped")


def test_a_neutral_listed_seed_is_classified_once_and_serves_only_the_cells_it_fits(tmp_path: Path) -> None:
    from synth_pipelines.generation.matrix import asked_conditions, build_matrix
    from synth_pipelines.generation.seeds import build_seed_problems, classify_seeds, seeds_to_classify

    base = load_spec(API_SPEC).spec
    spec = base.model_copy(update={"seed_problems": ["Delete a stale webhook", "Rotate the signing key"]})
    listed, _ = build_seed_problems(spec, None)
    assert [s.problem for s in seeds_to_classify(spec, listed)] == ["Rotate the signing key"]
    profile = scripted_profile()
    backends = {n: ScriptedBackend(n) for n in profile.models}
    client = build_client(profile, tmp_path / "cache.sqlite")
    client.backends.update(backends)
    seeds, failures = classify_seeds(spec, listed, client)
    assert failures == [] and backends["gen-a"].calls == 1
    assert "Problem: Rotate the signing key" in backends["gen-a"].requests[0].messages[-1].content
    fits = asked_conditions([s.model_dump() for s in seeds])
    (rotate_id,) = fits
    assert set(fits[rotate_id]) == {"auth", "operation"}
    assert all(isinstance(v, list) and v for v in fits[rotate_id].values())
    cells = build_matrix(spec, [(s.seed_id, s.problem) for s in seeds], target_count=48, asked=fits)
    for cell in cells:
        if cell.seed_id == rotate_id and cell.problem is None:
            assert cell.seed_match == "classified"
            assert all(cell.conditions[d] in fits[rotate_id][d] for d in cell.conditions), cell
    # The classification is cached: classifying again asks nothing.
    again, _ = classify_seeds(spec, listed, client)
    client.flush()
    assert backends["gen-a"].calls == 1 and again == seeds


def test_embedding_gates_run_in_chunks_that_overlap_the_judges(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cross-field gate embeds chunk by chunk in a worker thread; the first chunk's judges are
    called before the last chunk is embedded, and the verdicts equal one big batch's (issue 25)."""
    import threading
    import time

    from synth_pipelines.validation import apply_gates

    spec = load_spec(API_SPEC).spec.with_panel(0.5, "p", field_agreement=0.34)[0]
    off = "Bake the cake at 180 degrees for forty minutes until golden."
    rows = [{**EXAMPLE, "endpoint": f"/users/{{id}}/tokens/{{token}}/v{k}"} for k in range(6)]
    rows[1] = {**rows[1], "explanation": off}
    rows[4] = {**rows[4], "explanation": off}
    events: list[tuple[float, str]] = []
    lock = threading.Lock()

    def slow_embed(texts: list[str]) -> np.ndarray:
        with lock:
            events.append((time.perf_counter(), "embed"))
        time.sleep(0.3)
        return _topic_embed(texts)

    def judged_at(request, call_no):  # type: ignore[no-untyped-def]
        with lock:
            events.append((time.perf_counter(), "judge"))
        return None  # the scripted reply

    def run(chunk: int) -> tuple[list[str], dict[str, int]]:
        monkeypatch.setattr(apply_gates, "GATE_CHUNK", chunk)
        profile = scripted_profile()
        client = build_client(profile, None)
        client.backends.update({n: ScriptedBackend(n, judged_at, judge_score=5) for n in profile.models})
        outcome = validate_examples(
            spec, _raw(rows), client, list(profile.roles.validators), embed=slow_embed, early_stop=False
        )
        return outcome.accepted.column("example_id").to_pylist(), outcome.stage_counts

    events.clear()
    accepted, stages = run(2)
    embeds = [t for t, kind in events if kind == "embed"]
    judges = [t for t, kind in events if kind == "judge"]
    assert len(embeds) == 3  # three chunks of two
    assert min(judges) < max(embeds)  # chunk 1's judges ran while a later chunk was embedding
    assert stages == {"inconsistent_fields": 2}
    assert sorted(accepted) == ["e0", "e2", "e3", "e5"]
    assert run(1000) == (accepted, stages)  # the same verdicts as one batch


def test_a_judged_candidate_costs_about_a_kilobyte_of_memory() -> None:
    # A validation holds one verdict per candidate until it publishes (100,000 at scale); as pydantic
    # models they took ~4.4 KB each, which put the 100,000-row run over its 2 GB budget.
    import pickle
    import tracemalloc

    from synth_pipelines.validation.apply_gates import JudgedCandidates
    from synth_pipelines.validation.consensus import Consensus, JudgeScore

    def verdict(i: int) -> Consensus:
        judges = [
            JudgeScore(
                model=name,
                weight=weight,
                scores={c: (i % 5) / 4 for c in ("coherence", "accuracy", "relevance", "consistency")},
                score=(i % 5) / 4,
                reason=f"payload invoice region churn order {i}",
                prompt_tokens=300,
                completion_tokens=40,
                model_calls=1,
            )
            for name, weight in (("judge-a", 1.0), ("judge-b", 0.7))
        ]
        return Consensus(consensus=0.5, passed=True, spread=0.25, judges=judges, skipped_calls=0)

    n = 5000
    tracemalloc.start()
    try:
        judged = JudgedCandidates(verdicts={f"ex-{i:06d}": verdict(i) for i in range(n)})
        per_row = tracemalloc.get_traced_memory()[0] / n
    finally:
        tracemalloc.stop()
    assert per_row < 1600, f"{per_row:.0f} bytes per judged candidate"
    # The shard's report goes to the publishing step pickled: it must come back whole.
    back = pickle.loads(pickle.dumps(judged))
    assert back.verdicts["ex-000003"].judges[1].scores["accuracy"] == 0.75
    assert back.verdicts == judged.verdicts
