"""Training exports: SFT/QA shape, DPO ranking and skips, GRPO verification in a sandboxed subprocess."""

from __future__ import annotations

import json

from synth_pipelines.spec.model import parse_spec
from synth_pipelines.warehouse.exports import (
    dpo_rows,
    evaluate_expressions,
    grpo_rows,
    qa_rows,
    sft_rows,
    split_for,
)

SPEC = parse_spec(
    {
        "name": "Arithmetic",
        "version": 1,
        "domain": "arith",
        "type": "skill-demonstration",
        "description": "Word problems with a checkable answer.",
        "fields": {
            "question": {"type": "string"},
            "expression": {"type": "string"},
            "answer": {"type": "number"},
        },
        "program": {"inputs": ["question"], "outputs": ["expression", "answer"]},
        "validation": {"consensus_threshold": 0.5},
        "verification": {"answer_field": "answer", "expression_field": "expression"},
        "training_format": "grpo-verifiable",
    }
)


def row(i: int, example: dict, consensus: float = 0.9, problem: str = "p", **kw) -> dict:
    return {
        "example_id": f"e{i}",
        "example_json": json.dumps(example),
        "consensus": consensus,
        "problem": problem,
        "complexity": "simple",
        "conditions_json": "{}",
        **kw,
    }


def test_sft_and_qa_rows() -> None:
    r = [row(1, {"question": "What is 2+3?", "expression": "2+3", "answer": 5})]
    sft = sft_rows(SPEC, r)[0]
    assert [m["role"] for m in sft["messages"]] == ["system", "user", "assistant"]
    assert sft["messages"][1]["content"] == "What is 2+3?"
    assert "answer: 5" in sft["messages"][2]["content"]
    assert qa_rows(SPEC, r)[0]["question"] == "What is 2+3?"
    assert split_for("e1") in ("train", "test") and split_for("e1") == split_for("e1")


def test_dpo_ranks_candidates_and_skips_degenerate_pairs() -> None:
    validated = [
        row(1, {"question": "a", "expression": "1", "answer": 1}, 0.9, problem="P1"),
        row(2, {"question": "b", "expression": "1", "answer": 1}, 0.3, problem="P2"),
        row(3, {"question": "c", "expression": "1", "answer": 1}, 0.4, problem="P3"),
    ]
    rejected = [
        row(
            4, {"question": "weak", "expression": "1", "answer": 1}, 0.2, problem="P1", fail_stage="consensus"
        ),
        row(
            5, {"question": "mid", "expression": "1", "answer": 1}, 0.5, problem="P1", fail_stage="consensus"
        ),
        row(
            6, {"question": "low", "expression": "1", "answer": 1}, 0.1, problem="P2", fail_stage="consensus"
        ),
        row(7, {"question": "c", "expression": "1", "answer": 1}, 0.1, problem="P3", fail_stage="consensus"),
        row(8, {"question": "rule", "expression": "1", "answer": 1}, None, problem="P1", fail_stage="rules"),
    ]
    pairs, skipped = dpo_rows(SPEC, validated, rejected)
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair["chosen_consensus"] == 0.9 and pair["rejected_consensus"] == 0.2 and pair["candidates"] == 3
    assert "question: a" in pair["chosen"] and "question: weak" in pair["rejected"]
    assert skipped["both_below_threshold"] == 1  # P2: best 0.3 < 0.5
    assert skipped["identical"] == 1  # P3: same text


def test_grpo_keeps_only_verified_answers() -> None:
    validated = [
        row(1, {"question": "2 apples plus 3", "expression": "2+3", "answer": 5}),
        row(2, {"question": "wrong", "expression": "2*3", "answer": 5}),
        row(3, {"question": "code", "expression": "__import__('os').system('echo hi')", "answer": 0}),
        row(4, {"question": "huge", "expression": "9**999999", "answer": 1}),
        row(5, {"question": "divide", "expression": "7/0", "answer": 1}),
    ]
    out, dropped = grpo_rows(SPEC, validated)
    assert [r["id"] for r in out] == ["e1"]
    assert dropped == {"wrong_answer": 1, "not_evaluable": 3}


def test_evaluator_rejects_non_arithmetic_and_times_out() -> None:
    results = evaluate_expressions(["1+1", "open('x')", "(lambda: 1)()"])
    assert results[0] == {"value": 2.0}
    assert "only arithmetic" in results[1]["error"] and "only arithmetic" in results[2]["error"]
    assert "timed out" in evaluate_expressions(["1"], timeout_s=0.000001)[0]["error"]
