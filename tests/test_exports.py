"""Training exports: SFT/QA shape, DPO ranking and skips, GRPO verification in a sandboxed subprocess."""

from __future__ import annotations

import json

import pytest

from synth_pipelines.exports.training import (
    dpo_rows,
    evaluate_expressions,
    grpo_rows,
    qa_rows,
    sft_rows,
    split_for,
)
from synth_pipelines.spec.loading import parse_spec

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


def test_evaluator_rejects_non_arithmetic_in_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    import synth_pipelines.exports.training as exports

    def no_process(*args, **kwargs):
        raise AssertionError("a rejected expression must never reach the verifier process")

    monkeypatch.setattr(exports.subprocess, "Popen", no_process)
    results = evaluate_expressions(["open('x')", "(lambda: 1)()", "True + 1", "'a' * 3", "1 +", "9" * 600])
    reasons = [r["error"] for r in results]
    assert "Call is not arithmetic" in reasons[0] and "Call is not arithmetic" in reasons[1]
    assert "True is not a number" in reasons[2] and "'a' is not a number" in reasons[3]
    assert "not an arithmetic expression" in reasons[4] and "longer than 500" in reasons[5]


def test_powers_evaluate_and_the_guard_bounds_the_exponent() -> None:
    results = evaluate_expressions(["2**10", "(-2)**3", "2**-1", "2**0.5", "2**1000", "9**9**9", "2**(3+4)"])
    assert [r.get("value") for r in results[:4]] == [1024.0, -8.0, 0.5, pytest.approx(2**0.5)]
    assert "exponent 1000 is larger than 64" in results[4]["error"]
    assert (
        "exponent must be a number" in results[5]["error"]
        and "exponent must be a number" in results[6]["error"]
    )


def test_each_expression_has_its_own_timeout() -> None:
    slow = "((999999**64)**64)**64"  # allowed, and about half a second of big-integer arithmetic
    results = evaluate_expressions(["1+1", slow, "2*3"], timeout_s=0.1)
    assert results[0] == {"value": 2.0} and results[2] == {"value": 6.0}
    assert "TimeoutError" in results[1]["error"]


def test_verifier_runs_isolated_and_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    import synth_pipelines.exports.training as exports

    seen: dict[str, object] = {}
    real = exports.subprocess.Popen

    def spy(args, **kwargs):
        seen.update(args=args, env=kwargs.get("env"))
        return real(args, **kwargs)

    monkeypatch.setenv("SYNTH_OPENAI_API_KEY", "sk-must-not-reach-the-child")
    monkeypatch.setattr(exports.subprocess, "Popen", spy)
    assert evaluate_expressions(["6*7"]) == [{"value": 42.0}]
    assert seen["env"] == {} and "-I" in seen["args"]  # nothing inherited, isolated mode
    assert "RLIMIT_CPU" in exports._VERIFIER and "RLIMIT_AS" in exports._VERIFIER


def test_a_dying_verifier_blames_one_expression_and_finishes_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import synth_pipelines.exports.training as exports

    # A child that answers one expression, then dies (as on a limit or a crash).
    monkeypatch.setattr(
        exports,
        "_VERIFIER",
        "import json, sys\njson.loads(sys.stdin.read())\n"
        "print(json.dumps({'value': 1.0}), flush=True)\nsys.exit(9)",
    )
    results = evaluate_expressions(["1", "2", "3"])
    assert results[0] == {"value": 1.0} and results[2] == {"value": 1.0}  # the rest went to a new child
    assert "verifier stopped on this expression" in results[1]["error"]
