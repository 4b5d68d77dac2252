"""Gates, near-duplicate clustering and the blocking behaviour of the asset checks."""

from __future__ import annotations

import random
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pytest

from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import materialize_domain
from synth_pipelines.spec.loading import parse_spec
from synth_pipelines.validation import gates
from synth_pipelines.validation.dedup import (
    embedding_clusters,
    near_duplicate_clusters,
    near_duplicate_selection,
)

SPEC = parse_spec(
    {
        "name": "t",
        "version": 1,
        "domain": "demo",
        "type": "api-example",
        "description": "d",
        "fields": {"q": {"type": "string", "max_length": 50}},
        "validation": {"min_pass_rate": 0.8, "diversity_threshold": 0.5},
    }
)
SPEC = SPEC.with_panel(None, "uncalibrated")[0]  # consensus: the design's 0.75


def test_schema_compliance_gate() -> None:
    ok = gates.schema_compliance(SPEC, [{"example_id": "a", "example_json": '{"q": "fine"}'}])
    assert ok.passed and ok.value == 1.0
    bad = gates.schema_compliance(
        SPEC,
        [
            {"example_id": "a", "example_json": '{"q": "fine"}'},
            {"example_id": "b", "example_json": '{"q": 3}'},
        ],
    )
    assert not bad.passed and bad.value == 0.5 and bad.detail["failures"][0]["example_id"] == "b"


def test_consensus_pass_rate_gate() -> None:
    validated = [{"consensus": 0.9}] * 8
    rejected = [{"fail_stage": "consensus"}] * 2 + [{"fail_stage": "rules"}] * 5
    gate = gates.consensus_pass_rate(SPEC, validated, rejected)
    assert gate.value == pytest.approx(0.8) and gate.passed  # rules rejects are not judged
    failing = gates.consensus_pass_rate(SPEC, validated, [*rejected, {"fail_stage": "consensus"}])
    assert not failing.passed
    assert gates.consensus_pass_rate(SPEC, validated, rejected, min_pass_rate=0.95).passed is False
    assert not gates.consensus_pass_rate(SPEC, [], []).passed  # nothing judged cannot pass


def test_one_judged_pass_rate_for_the_gate_the_card_and_the_stage_counts() -> None:
    """Memory duplicates and rules rejects were never judged; near duplicates were judged and passed."""
    from collections import Counter

    from synth_pipelines.exports.cards import dataset_card

    validated = [{"consensus": 0.9, "validator_scores": []}] * 6
    rejected = (
        [{"fail_stage": "consensus"}] * 3
        + [{"fail_stage": "near_duplicate"}] * 3
        + [{"fail_stage": "memory_duplicate"}] * 10
        + [{"fail_stage": "rules"}] * 4
    )
    counted = gates.judged_pass_rate(6, Counter(r["fail_stage"] for r in rejected))
    assert (counted.judged, counted.passed, counted.rate) == (12, 9, 0.75)
    assert gates.consensus_pass_rate(SPEC, validated, rejected).value == pytest.approx(0.75)
    card = dataset_card(
        SPEC,
        "sft",
        rows=6,
        splits={"train": 6},
        name="t",
        raw=[],
        validated=validated,
        rejected=rejected,
        diversity={},
        skipped={},
        run_ids=[],
    )
    assert "| consensus pass rate | 75.00% |" in card
    assert gates.judged_pass_rate(0, {"rules": 5}).rate is None


def test_duplicates_target_and_diversity_gates() -> None:
    assert gates.exact_duplicates([{"dedup_key": "a"}, {"dedup_key": "b"}]).passed
    dup = gates.exact_duplicates([{"dedup_key": "a"}, {"dedup_key": "a"}])
    assert not dup.passed and dup.value == 1
    assert gates.target_reached(10, 10).passed and not gates.target_reached(9, 10).passed
    assert gates.diversity(0.6, 0.5).passed and not gates.diversity(0.4, 0.5).passed
    assert not gates.diversity(None, 0.5).passed
    # One example has no pair: the gate fails saying so, not claiming a distance of 0.
    single = gates.diversity(None, 0.3, examples=1)
    assert not single.passed and single.not_measured is not None
    assert single.describe("diversity") == (
        "diversity not measured: 1 stored example, and diversity needs at least two to compare: FAILS"
    )
    assert "no stored examples" in str(gates.diversity(None, 0.3, examples=0).not_measured)


def test_near_duplicates_found_and_best_kept() -> None:
    rng = random.Random(3)
    words = [f"word{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(200)]
    near = texts[5].split()
    near[10] = "changed"
    texts.append(" ".join(near))  # index 200 ~ index 5
    texts.append(texts[7].upper())  # index 201 == index 7 after normalization
    clusters = near_duplicate_clusters(texts, threshold=0.8)
    assert clusters.labels[200] == clusters.labels[5]
    assert clusters.labels[201] == clusters.labels[7]
    assert clusters.n_clusters == 200
    scores = [0.5] * len(texts)
    scores[200] = 0.9  # the near copy scored better: it is the one kept
    keep, replaced_by = near_duplicate_selection(texts, scores, threshold=0.8)
    assert 200 in keep and 5 not in keep and replaced_by[5] == 200
    assert 7 in keep and replaced_by[201] == 7  # tie: the earlier row wins


def test_near_duplicate_selection_of_nothing_is_nothing() -> None:
    # Zero accepted examples (every judge call failed, or every row was rejected) used to crash here.
    assert near_duplicate_selection([], [], threshold=0.8) == ([], {})


def test_short_texts_are_compared_on_their_characters() -> None:
    # A uniqueness field holding one short value renders as two words ("method: GET"): shorter than
    # a word 3-shingle, these once all collapsed into the same signature and all but one were dropped.
    texts = ["method: GET", "method: POST", "method: PUT", "method: DELETE", "method: get"]
    keep, replaced_by = near_duplicate_selection(texts, [0.5] * 5, threshold=0.8)
    assert keep == [0, 1, 2, 3] and replaced_by == {4: 0}


def test_minhash_signatures_do_not_depend_on_how_the_texts_are_batched() -> None:
    # Memory is bounded by shingles per pass and characters per batch; a long text (code, a log)
    # is split across passes and combined by the running minimum: the signatures must not change.
    from synth_pipelines.validation.dedup import minhash_signatures

    rng = random.Random(5)
    texts = [" ".join(f"w{rng.randrange(300)}" for _ in range(rng.randint(3, 80))) for _ in range(300)]
    texts += [" ".join(f"t{rng.randrange(2000)}" for _ in range(5000))]
    rng.shuffle(texts)
    whole = minhash_signatures(texts)
    for batch_chars, pass_shingles in ((1, 1), (500, 37), (10_000, 4096), (10**9, 1)):
        split = minhash_signatures(texts, batch_chars=batch_chars, pass_shingles=pass_shingles)
        assert np.array_equal(split, whole), (batch_chars, pass_shingles)
    # Short texts (character grams) and empty ones mixed in: passes still change nothing.
    mixed = [*texts[:50], "", "GET", "method: GET", "method: POST", *texts[50:]]
    assert np.array_equal(minhash_signatures(mixed), minhash_signatures(mixed, pass_shingles=7))
    # And they are signatures: a text is identical to itself only.
    assert len({row.tobytes() for row in whole}) == len(set(texts))


def test_kept_rows_are_never_near_and_every_dropped_row_is_near_a_kept_one() -> None:
    from synth_pipelines.validation.dedup import minhash_signatures

    rng = random.Random(11)
    vocabulary = [f"w{i}" for i in range(400)]
    base = [rng.choice(vocabulary) for _ in range(200)]
    # Overlapping windows: each text is a near duplicate of the next, rarely of the one after: chains.
    texts = [" ".join(base[i : i + 40]) for i in range(0, 150, 3)]
    scores = [rng.random() for _ in texts]
    threshold = 0.8
    keep, replaced_by = near_duplicate_selection(texts, scores, threshold=threshold)
    sig = minhash_signatures(texts)
    similar = (sig[:, None, :] == sig[None, :, :]).mean(axis=2) >= threshold  # every pair, small n
    kept = set(keep)
    assert kept.isdisjoint(replaced_by) and kept | set(replaced_by) == set(range(len(texts)))
    assert not any(similar[i, j] for i in kept for j in kept if i < j)
    assert all(replaced_by[d] in kept and similar[d, replaced_by[d]] for d in replaced_by)
    # Chains exist here, and single linkage would have dropped rows that no kept row is near.
    clusters = near_duplicate_clusters(texts, threshold=threshold)
    assert clusters.n_clusters < len(keep)


def test_embedding_clusters_link_close_vectors_only() -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((2000, 384)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[1::2] = v[0::2] + 0.01 * rng.standard_normal((1000, 384)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    clusters = embedding_clusters(v, threshold=0.9)
    assert clusters.n_clusters == 1000
    assert (clusters.labels[0::2] == clusters.labels[1::2]).all()


def test_embedding_clusters_memory_stays_bounded_with_a_million_candidate_pairs() -> None:
    """12,000 rows around 120 topics: ~600,000 pairs above the threshold, in 28 bands each. Every
    band's pairs at once, or the vectors of 200,000 pairs gathered in one step, took over 600 MB
    at this size (and grew with it); the clusters must come out the same in bounded steps."""
    import tracemalloc

    rng = np.random.default_rng(1)
    centers = rng.standard_normal((120, 384)).astype(np.float32)
    topic = rng.integers(0, 120, 12_000)
    v = centers[topic] + 0.3 * rng.standard_normal((12_000, 384)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    tracemalloc.start()
    try:
        clusters = embedding_clusters(v, threshold=0.8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert clusters.n_clusters == 120 and clusters.pairs > 400_000
    assert all(len(set(clusters.labels[topic == t])) == 1 for t in range(120))
    assert peak < 120e6, f"{peak / 1e6:.0f} MB"


def test_failing_blocking_check_stops_downstream(
    warehouse_root: Path, schemas_dir: Path, scripted_backends
) -> None:
    """Scripted replies are random words from a small vocabulary; with an on-topic gate at 0.99
    (which no such reply reaches) every row is rejected before any judge, nothing is judged, the
    blocking consensus_pass_rate check fails, and nothing downstream of validated_examples runs.
    (The diversity gate on its own: test_assets.)"""
    import yaml

    spec_path = schemas_dir / "api_development.yaml"
    data = yaml.safe_load(spec_path.read_text())
    data.setdefault("validation", {})["on_topic_threshold"] = 0.99
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    res = {
        "warehouse": WarehouseResource(root=str(warehouse_root), schemas_dir=str(schemas_dir)),
        "llm": LLMResource(profile="local"),
        "embedder": EmbedderResource(),
    }
    result = materialize_domain(
        "api_development", instance=dg.DagsterInstance.ephemeral(), target_count=8, resources=res
    )
    assert not result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "validated_examples" in materialized
    assert not materialized & {"example_embeddings", "compiled_program"}
    evaluations = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert not evaluations["consensus_pass_rate"].passed
    assert evaluations["consensus_pass_rate"].metadata["detail"].value["judged"] == 0
    stages = duckdb.sql(
        "select fail_stage, count(*) from "
        f"read_parquet('{warehouse_root}/rejected_examples/*/*.parquet') group by 1"
    ).fetchall()
    assert dict(stages).get("off_topic", 0) >= 1 and "consensus" not in dict(stages)
    # The last line a user reads names the check, its value, the threshold and its source, and a fix
    # (Dagster's own DagsterAssetCheckFailedError message ends cut short after a colon).
    from synth_pipelines.runner import failure_messages, summarize
    from synth_pipelines.warehouse.storage import Warehouse

    messages = failure_messages(result)
    # The local profile's panel is skipped (uninformative): no rate, and the line says why it failed.
    assert messages == [
        "consensus_pass_rate failed, not measured: the validator panel was skipped (validation.panel is "
        "off for this run); and no example passed the gates before it: every row was rejected before "
        "the (skipped) validator panel: rejected_examples.fail_stage and fail_reasons say which gate and why"
    ]
    summary = summarize("api_development", result, Warehouse(warehouse_root), 1.0)
    assert "program:" not in summary  # compiled_program was not written: no path to it
    parquet = next(line for line in summary.splitlines() if line.strip().startswith("parquet:"))
    written = parquet.split(" for ", 1)[1].split(", ")
    assert {"seed_problems", "problem_matrix", "raw_generations", "validated_examples"} <= set(written)
    assert "example_embeddings" not in written


def test_great_expectations_suite_compares_array_fields_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec without ``constraints.uniqueness`` and with an array field (seen on a regular-expression
    domain nobody here had tuned for): GE cannot hash lists, so its compound uniqueness failed on
    two distinct rows, and the failure said nothing. Lists are compared as canonical JSON."""
    from synth_pipelines.validation import ge_suite

    spec = parse_spec(
        {
            "name": "t", "version": 1, "domain": "demo", "type": "skill-demonstration", "description": "d",
            "fields": {
                "pattern": {"type": "string", "max_length": 40},
                "matches": {"type": "array", "items": {"type": "string", "max_length": 20}, "max_items": 3},
            },
        }
    )  # fmt: skip
    rows = ['{"pattern": "a+", "matches": ["a", "aa"]}', '{"pattern": "a+", "matches": ["aaa"]}']
    assert ge_suite.run_suite(spec, rows)["success"]
    repeated = ge_suite.run_suite(spec, [*rows, rows[0]])
    [failing] = [r for r in repeated["results"] if not r["success"]]
    assert failing["column"] == "uniqueness key (pattern, matches)" and failing["unexpected"] == 2
    # What GE did before: it raises inside the expectation and reports a bare failure. The
    # exception's message is now part of the result, so a failure always says why.
    monkeypatch.setattr(ge_suite, "uniqueness_key_column", lambda spec: None)
    [raised] = [r for r in ge_suite.run_suite(spec, rows)["results"] if not r["success"]]
    assert raised["expectation"] == "expect_compound_columns_to_be_unique"
    assert "unhashable" in raised["error"]


def test_great_expectations_suite_from_spec() -> None:
    from synth_pipelines.validation.ge_suite import run_suite

    spec = parse_spec(
        {
            "name": "t",
            "version": 1,
            "domain": "demo",
            "type": "api-example",
            "description": "d",
            "fields": {
                "q": {"type": "string", "min_length": 2, "max_length": 10},
                "m": {"type": "string", "enum": ["GET", "POST"]},
                "n": {"type": "integer", "min": 0, "max": 5, "required": False},
            },
            "constraints": {"uniqueness": ["q"]},
        }
    )
    good = ['{"q": "abc", "m": "GET", "n": 1}', '{"q": "abd", "m": "POST"}']
    ok = run_suite(spec, good)
    assert ok["success"] and ok["statistics"]["evaluated_expectations"] >= 8
    bad = [
        *good,
        '{"q": "abc", "m": "PUT", "n": 9}',
        '{"q": "waytoolongvalue", "m": "GET", "n": "x"}',
    ]
    result = run_suite(spec, bad)
    assert not result["success"]
    failing = {(r["expectation"], str(r["column"])) for r in result["results"] if not r["success"]}
    assert ("expect_column_values_to_be_in_set", "m") in failing
    assert ("expect_column_value_lengths_to_be_between", "q") in failing
    assert ("expect_column_values_to_be_unique", "q") in failing
    assert ("expect_column_values_to_be_between", "n") in failing or (
        "expect_column_values_to_be_in_type_list",
        "n",
    ) in failing
