"""Edge paths that must never lose good data or invent numbers (issue 11): nothing accepted, a run
that failed or was cut short, a budget that meets free cached work, outages during scoring, early
termination of the judge panel, and every optimizer and metric of the program."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from synth_pipelines.llm.types import CompletionRequest, ProviderError
from synth_pipelines.resources import LLMResource
from synth_pipelines.warehouse.storage import Warehouse
from tests.materialize import asset, failure_message, materialize_domain, up_to
from tests.scripted import ScriptedBackend

DOMAIN = "api_development"
UP_TO_VALIDATED = up_to("validated_examples")
UP_TO_RAW = up_to("raw_generations")

Script = Callable[[CompletionRequest, int], str | None]


def is_judge(request: CompletionRequest) -> bool:
    return "reason" in (request.json_schema or {}).get("properties", {})


@pytest.fixture
def scripts(monkeypatch: pytest.MonkeyPatch) -> dict[str, Script]:
    """Route the bundled profile's models to scripted backends whose scripts a test sets by name
    (``"*"`` for every model); a script returns a reply, None for a schema-valid default, or raises."""
    from synth_pipelines.llm import factory

    table: dict[str, Script] = {}
    made: dict[str, ScriptedBackend] = {}

    def script_for(name: str) -> Script:
        def run(request: CompletionRequest, call_no: int) -> str | None:
            chosen = table.get(name) or table.get("*")
            return chosen(request, call_no) if chosen else None

        return run

    def backend_for(name, config, api_key=None):
        if name not in made:
            made[name] = ScriptedBackend(name, script=script_for(name))
        return made[name]

    monkeypatch.setattr(factory, "backend_for", backend_for)
    table["_made"] = made  # type: ignore[assignment]
    return table


def materialize(
    warehouse: Path,
    schemas: Path,
    assets: list,
    *,
    target: int | None,
    llm: LLMResource | None = None,
    **op_config: dict,
) -> dg.ExecuteInJobResult:
    return materialize_domain(
        assets, warehouse, schemas, llm=llm or "local", target=target, op_config=op_config,
        raise_on_error=False,
    )  # fmt: skip


def ids(warehouse: Path, asset: str) -> list[str]:
    table = Warehouse(warehouse).read_partition(asset, DOMAIN, columns=["example_id"])
    return [] if table is None else table.column("example_id").to_pylist()


def judge_scores(score: int) -> Script:
    """Every judge answers ``score`` on every criterion."""
    import json

    def script(request: CompletionRequest, call_no: int) -> str | None:
        if not is_judge(request):
            return None
        criteria = [k for k in request.json_schema["properties"] if k != "reason"]  # type: ignore[index]
        return json.dumps({"reason": "scripted verdict", **dict.fromkeys(criteria, score)})

    return script


# ------------------------------------------------------------------------------ 1: nothing accepted


def test_nothing_accepted_by_the_data_writes_an_empty_partition_and_every_rejection(
    tmp_path: Path, scripted_schemas_dir: Path, scripts: dict
) -> None:
    scripts["*"] = judge_scores(1)  # consensus 0: below any threshold
    result = materialize(tmp_path / "wh", scripted_schemas_dir, UP_TO_VALIDATED, target=6)
    assert result.success
    wh = Warehouse(tmp_path / "wh")
    assert ids(tmp_path / "wh", "validated_examples") == []  # an empty partition, not a crash
    rejected = wh.read_partition("rejected_examples", DOMAIN, columns=["fail_stage", "fail_reasons"])
    assert rejected is not None and rejected.num_rows == 6
    stages = rejected.column("fail_stage").to_pylist()
    assert stages.count("consensus") >= 1
    reasons = [r for rs in rejected.column("fail_reasons").to_pylist() for r in rs]
    assert any("below threshold" in r for r in reasons)


def test_nothing_judged_because_the_provider_failed_keeps_the_previous_partition(
    tmp_path: Path, scripted_schemas_dir: Path, scripts: dict
) -> None:
    wh_root = tmp_path / "wh"
    assert materialize(wh_root, scripted_schemas_dir, UP_TO_VALIDATED, target=6).success
    before = ids(wh_root, "validated_examples")
    assert before

    def judges_down(request: CompletionRequest, call_no: int) -> str | None:
        if is_judge(request):
            raise ProviderError("judge", "HTTP 400: model 'judge' does not exist", kind="http", status=400)
        return None

    scripts["*"] = judges_down
    result = materialize(
        wh_root,
        scripted_schemas_dir,
        UP_TO_VALIDATED,
        target=6,
        llm=LLMResource(profile="local", use_cache=False),
    )
    assert not result.success
    message = failure_message(result)
    assert "judge calls failed" in message and "does not exist" in message
    assert ids(wh_root, "validated_examples") == before  # the good data stayed
    rejected = Warehouse(wh_root).read_partition("rejected_examples", DOMAIN, columns=["fail_reasons"])
    assert rejected is not None and any(
        "does not exist" in r for rs in rejected.column("fail_reasons").to_pylist() for r in rs
    )  # and this run's rows say why


# ------------------------------------------------------------- 2: a bad run never replaces a good one


def test_a_budget_stop_does_not_replace_the_complete_partition(
    tmp_path: Path, scripted_schemas_dir: Path, scripts: dict
) -> None:
    wh_root = tmp_path / "wh"
    assert materialize(wh_root, scripted_schemas_dir, UP_TO_RAW, target=6).success
    complete = ids(wh_root, "raw_generations")
    result = materialize(
        wh_root, scripted_schemas_dir, UP_TO_RAW, target=12, llm=LLMResource(profile="local", budget_tokens=1)
    )
    assert not result.success
    message = failure_message(result)
    assert "was not published" in message and "budget of 1 tokens" in message and "allow_partial" in message
    assert ids(wh_root, "raw_generations") == complete


def test_mostly_failed_generation_fails_unless_partial_is_allowed(
    tmp_path: Path, scripted_schemas_dir: Path, scripts: dict
) -> None:
    wh_root = tmp_path / "wh"
    assert materialize(wh_root, scripted_schemas_dir, UP_TO_RAW, target=6).success
    complete = ids(wh_root, "raw_generations")

    def half_down(request: CompletionRequest, call_no: int) -> str | None:
        if not is_judge(request) and request.seed % 2:
            raise ProviderError("gen", "HTTP 503: overloaded", kind="http", status=503)
        return None

    scripts["*"] = half_down
    no_cache = LLMResource(profile="local", use_cache=False)
    result = materialize(wh_root, scripted_schemas_dir, UP_TO_RAW, target=12, llm=no_cache)
    assert not result.success
    message = failure_message(result)
    assert "got no answer from the provider" in message and "HTTP 503" in message
    assert ids(wh_root, "raw_generations") == complete
    allowed = materialize(
        wh_root,
        scripted_schemas_dir,
        UP_TO_RAW,
        target=12,
        llm=no_cache,
        raw_generations={"allow_partial": True},
    )
    assert allowed.success and len(ids(wh_root, "raw_generations")) == 12


# --------------------------------------------------------------------- 3: cached work is always free


def test_the_budget_never_stops_cached_items(
    tmp_path: Path, scripted_schemas_dir: Path, scripts: dict
) -> None:
    wh_root = tmp_path / "wh"
    assert materialize(wh_root, scripted_schemas_dir, UP_TO_RAW, target=6).success
    cached = set(ids(wh_root, "raw_generations"))
    result = materialize(
        wh_root,
        scripted_schemas_dir,
        UP_TO_RAW,
        target=12,
        llm=LLMResource(profile="local", budget_tokens=1),
        raw_generations={"allow_partial": True},
    )
    assert result.success
    kept = set(ids(wh_root, "raw_generations"))
    assert cached <= kept  # every cached item served, whatever came first in the plan
    meta = next(
        e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "raw_generations"
    )
    assert "budget of 1 tokens" in meta.materialization.metadata["stopped_reason"].value


def test_client_budget_counts_billed_calls_only(tmp_path: Path) -> None:
    from pydantic import BaseModel

    from synth_pipelines.llm.cache import ResponseCache
    from synth_pipelines.llm.client import BudgetExhausted, LLMClient
    from synth_pipelines.llm.types import ChatMessage
    from tests.scripted import scripted_profile

    class Reply(BaseModel):
        text: str

    schema = {
        "type": "object",
        "properties": {"text": {"type": "string", "maxLength": 8}},
        "required": ["text"],
    }
    backends = {n: ScriptedBackend(n) for n in ("gen-a", "gen-b", "judge-a", "judge-b")}
    cache = ResponseCache(tmp_path / "c.sqlite")
    warm = LLMClient(scripted_profile(), backends, cache)
    for i in range(5):
        warm.structured(["gen-a"], [ChatMessage(role="user", content=f"q{i}")], Reply, json_schema=schema)
    client = LLMClient(scripted_profile(), backends, cache, budget_tokens=100)
    for i in range(5):  # five cache hits: free
        client.structured(["gen-a"], [ChatMessage(role="user", content=f"q{i}")], Reply, json_schema=schema)
    assert client.billed_tokens == 0 and client.totals.cache_hits == 5
    client.structured(["gen-a"], [ChatMessage(role="user", content="new")], Reply, json_schema=schema)
    assert 0 < client.billed_tokens < 100  # one paid call, still within budget
    client.billed_tokens = 100
    with pytest.raises(BudgetExhausted):
        client.structured(["gen-a"], [ChatMessage(role="user", content="newer")], Reply, json_schema=schema)


# ------------------------------------------------------------------- 5: an outage is not a score


def test_an_outage_while_scoring_fails_the_program_and_records_no_score(
    tmp_path: Path, scripted_schemas_dir: Path, scripts: dict
) -> None:
    wh_root = tmp_path / "wh"
    assert materialize(wh_root, scripted_schemas_dir, up_to("example_embeddings"), target=8).success

    def down(request: CompletionRequest, call_no: int) -> str | None:
        raise ProviderError("m", "HTTP 502: bad gateway", kind="http", status=502)

    scripts["*"] = down
    result = materialize(
        wh_root,
        scripted_schemas_dir,
        [asset("compiled_program")],
        target=None,
        llm=LLMResource(profile="local", use_cache=False),
    )
    assert not result.success
    assert "No score was recorded" in failure_message(result) and "HTTP 502" in failure_message(result)
    assert Warehouse(wh_root).read_dataset("agent_performance") is None


def test_unparseable_predictions_score_zero_and_are_counted() -> None:
    from synth_pipelines.learning.program import build_metric, evaluate_program, make_lm, to_dspy_examples
    from synth_pipelines.llm.client import LLMClient
    from tests.scripted import scripted_profile

    spec = _program_spec("exact_match")
    client = LLMClient(
        scripted_profile(), {n: ScriptedBackend(n, lambda r, c: "not json at all") for n in _MODELS}
    )
    rows = [{"example": {"q": f"q{i}", "a": "x"}} for i in range(4)]
    program = spec.program_or_default()
    scores, failures = evaluate_program(
        _compiled(spec), to_dspy_examples(rows, program), make_lm(spec, client, "gen-a"), program,
        build_metric(spec, program, None, None),
    )  # fmt: skip
    assert failures == 4 and scores == [0.0] * 4


# ----------------------------------------------------------------- early termination of the panel


def test_the_panel_stops_once_the_outcome_is_decided() -> None:
    from synth_pipelines.llm.client import LLMClient
    from synth_pipelines.llm.config import WeightedModel
    from synth_pipelines.validation.consensus import judge_example
    from tests.scripted import scripted_profile

    spec = _program_spec("exact_match")  # consensus_threshold 0.75
    backends = {n: ScriptedBackend(n, judge_scores(1)) for n in _MODELS}
    client = LLMClient(scripted_profile(), backends)
    panel = [WeightedModel(model="judge-a", weight=1.0), WeightedModel(model="judge-b", weight=0.7)]
    verdict = judge_example(client, spec, panel, example_id="e", problem="p", example={"q": "x", "a": "y"})
    # judge-a scored 0; even a perfect judge-b could only reach 0.7/1.7 = 0.41 < 0.75: it is not asked.
    assert backends["judge-b"].calls == 0 and verdict.skipped_calls == 1 and not verdict.passed
    full = judge_example(
        client, spec, panel, example_id="e2", problem="p", example={"q": "x", "a": "y"}, early_stop=False
    )
    assert backends["judge-b"].calls == 1 and full.skipped_calls == 0


# ------------------------------------------------------------- every optimizer and every metric

_MODELS = ("gen-a", "gen-b", "judge-a", "judge-b")


def _program_spec(metric: str, optimizer: str = "labeled_few_shot"):  # type: ignore[no-untyped-def]
    from synth_pipelines.spec.loading import parse_spec

    return parse_spec(
        {
            "name": "t",
            "version": 1,
            "domain": "demo",
            "type": "test-case",
            "description": "answer with the method",
            "fields": {
                "q": {"type": "string", "max_length": 20},
                "a": {"type": "string", "enum": ["GET", "POST"]},
            },
            "program": {
                "inputs": ["q"],
                "outputs": ["a"],
                "metric": metric,
                "optimizer": optimizer,
                "max_demos": 2,
            },
        }
    ).with_panel(None, "uncalibrated")[0]


def _compiled(spec):  # type: ignore[no-untyped-def]
    from synth_pipelines.learning.program import DomainProgram, make_signature

    return DomainProgram(make_signature(spec, spec.program_or_default()))


def _program_client(answer: str, judge: int = 5, delay_s: float = 0.0):  # type: ignore[no-untyped-def]
    """Program calls always answer ``answer``; judges score ``judge``; tracks the most calls in flight."""
    import json

    from synth_pipelines.llm.client import LLMClient
    from tests.scripted import scripted_profile

    state = {"in_flight": 0, "peak": 0}
    lock = threading.Lock()

    def script(request: CompletionRequest, call_no: int) -> str | None:
        if is_judge(request):
            return judge_scores(judge)(request, call_no)
        if "a" not in (request.json_schema or {}).get("properties", {}):
            return None  # an optimizer's own call (e.g. MIPROv2 proposing instructions): a valid default
        with lock:
            state["in_flight"] += 1
            state["peak"] = max(state["peak"], state["in_flight"])
        time.sleep(delay_s)
        with lock:
            state["in_flight"] -= 1
        return json.dumps({"a": answer})

    backends = {n: ScriptedBackend(n, script) for n in _MODELS}
    return LLMClient(scripted_profile(), backends), backends, state


def _rows(answers: list[str]) -> list[dict]:
    return [
        {"example_id": f"e{i}", "cell_id": "c", "example": {"q": f"question {i}", "a": a}}
        for i, a in enumerate(answers)
    ]


def test_output_fields_named_like_a_predictions_methods_are_scored_as_fields() -> None:
    """A spec nobody here wrote had a boolean field ``copy``: reading predictions by attribute
    returned ``Prediction.copy`` (a method) and the compile crashed serializing it. Fields named
    ``copy`` and ``items`` are read as fields and scored like any other."""
    import json

    from synth_pipelines.learning.program import build_metric, evaluate_program, make_lm, to_dspy_examples
    from synth_pipelines.llm.client import LLMClient
    from synth_pipelines.spec.loading import parse_spec
    from tests.scripted import scripted_profile

    spec = parse_spec(
        {
            "name": "t", "version": 1, "domain": "demo", "type": "test-case", "description": "d",
            "fields": {
                "q": {"type": "string", "max_length": 20},
                "copy": {"type": "boolean"},
                "items": {"type": "string", "enum": ["one", "two"]},
            },
            "program": {"inputs": ["q"], "outputs": ["copy", "items"], "metric": "exact_match"},
        }
    ).with_panel(None, "uncalibrated")[0]  # fmt: skip
    answer = json.dumps({"copy": True, "items": "two"})
    client = LLMClient(scripted_profile(), {n: ScriptedBackend(n, lambda r, c: answer) for n in _MODELS})
    program = spec.program_or_default()
    rows = [{"example": {"q": f"q{i}", "copy": i != 2, "items": "two"}} for i in range(4)]
    scores, failures = evaluate_program(
        _compiled(spec), to_dspy_examples(rows, program), make_lm(spec, client, "gen-a"), program,
        build_metric(spec, program, None, None),
    )  # fmt: skip
    assert failures == 0 and scores == [1.0, 1.0, 0.0, 1.0]


def test_predicted_arrays_of_objects_are_plain_json_when_scored() -> None:
    """The conversation template's ``turns`` is an array of objects: DSPy parses it into a list of
    pydantic models, and scoring crashed serializing them (seen on the template, not on our specs).
    Nested models reach the metric as plain JSON and score like the gold rows they equal."""
    import json

    from synth_pipelines.learning.program import build_metric, evaluate_program, make_lm, to_dspy_examples
    from synth_pipelines.llm.client import LLMClient
    from synth_pipelines.spec.loading import parse_spec
    from tests.scripted import scripted_profile

    turn = {
        "type": "object",
        "properties": {
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "text": {"type": "string", "max_length": 40},
        },
    }
    spec = parse_spec(
        {
            "name": "t", "version": 1, "domain": "demo", "type": "conversation", "description": "d",
            "fields": {
                "topic": {"type": "string", "max_length": 20},
                "turns": {"type": "array", "items": turn, "min_items": 1, "max_items": 4},
            },
            "program": {"inputs": ["topic"], "outputs": ["turns"], "metric": "exact_match"},
        }
    ).with_panel(None, "uncalibrated")[0]  # fmt: skip
    turns = [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}]
    answer = json.dumps({"turns": turns})
    client = LLMClient(scripted_profile(), {n: ScriptedBackend(n, lambda r, c: answer) for n in _MODELS})
    program = spec.program_or_default()
    rows = [{"example": {"topic": f"t{i}", "turns": turns if i else turns[:1]}} for i in range(3)]
    scores, failures = evaluate_program(
        _compiled(spec), to_dspy_examples(rows, program), make_lm(spec, client, "gen-a"), program,
        build_metric(spec, program, None, None),
    )  # fmt: skip
    assert failures == 0 and scores == [0.0, 1.0, 1.0]


@pytest.mark.parametrize(("answer", "expected"), [("GET", 0.75), ("POST", 0.25)])
def test_exact_match_scores_the_share_of_right_answers(answer: str, expected: float) -> None:
    from synth_pipelines.learning.program import build_metric, evaluate_program, make_lm, to_dspy_examples

    spec = _program_spec("exact_match")
    client, _, _ = _program_client(answer)
    program = spec.program_or_default()
    test = to_dspy_examples(_rows(["GET", "GET", "GET", "POST"]), program)
    scores, failures = evaluate_program(
        _compiled(spec),
        test,
        make_lm(spec, client, "gen-a"),
        program,
        build_metric(spec, program, None, None),
        threads=4,
    )
    assert failures == 0 and sum(scores) / len(scores) == expected


@pytest.mark.parametrize(("judge", "expected"), [(5, 1.0), (1, 0.0), (3, 0.5)])
def test_llm_judge_metric_is_the_panel_consensus(judge: int, expected: float) -> None:
    from synth_pipelines.learning.program import build_metric, evaluate_program, make_lm, to_dspy_examples
    from synth_pipelines.validation.consensus import ajudge_example, resolve_judges

    spec = _program_spec("llm_judge")
    client, _, _ = _program_client("GET", judge=judge)
    panel = resolve_judges(spec, client)

    async def one(pair):  # type: ignore[no-untyped-def]
        verdict = await ajudge_example(
            client,
            spec,
            panel,
            example_id=str(pair),
            problem="p",
            example={**pair[0], **pair[1]},
            early_stop=False,
        )
        return verdict.consensus or 0.0

    program = spec.program_or_default()
    metric = build_metric(spec, program, None, lambda pairs: client.pool(one, pairs, width=4))
    scores, _ = evaluate_program(
        _compiled(spec),
        to_dspy_examples(_rows(["GET", "POST"]), program),
        make_lm(spec, client, "gen-a"),
        program,
        metric,
    )
    assert scores == [pytest.approx(expected)] * 2


def test_bootstrap_few_shot_prefetches_concurrently_and_keeps_its_demos() -> None:
    from synth_pipelines.learning.program import compile_program, make_lm, to_dspy_examples

    spec = _program_spec("exact_match", optimizer="bootstrap_few_shot")
    client, _, state = _program_client("GET", delay_s=0.05)
    program = spec.program_or_default()
    train = to_dspy_examples(_rows(["GET", "POST", "GET", "GET", "POST", "GET"]), program)
    compiled = compile_program(spec, train, make_lm(spec, client, "gen-a"), _exact(spec), threads=4)
    assert state["peak"] > 1  # the teacher's questions went out concurrently
    demos = compiled.predict.demos
    assert len(demos) == 2 and all(d.get("a") in {"GET", "POST"} for d in demos)
    # Bootstrapped demos are the teacher's correct answers: exact match kept only "GET" traces.
    bootstrapped = [d for d in demos if d.get("augmented")]
    assert bootstrapped and all(d.get("a") == "GET" for d in bootstrapped)


def test_miprov2_compiles_with_threads() -> None:
    from synth_pipelines.learning.program import compile_program, make_lm, to_dspy_examples

    spec = _program_spec("exact_match", optimizer="miprov2")
    client, _, state = _program_client("GET", delay_s=0.01)
    program = spec.program_or_default()
    train = to_dspy_examples(_rows(["GET", "POST"] * 10), program)
    compiled = compile_program(spec, train, make_lm(spec, client, "gen-a"), _exact(spec), threads=4)
    assert state["peak"] > 1  # evaluated on several threads
    assert len(compiled.predict.demos) <= 2 and compiled.predict.signature.instructions


def _exact(spec):  # type: ignore[no-untyped-def]
    from synth_pipelines.learning.program import build_metric

    return build_metric(spec, spec.program_or_default(), None, None)


def test_an_append_only_dataset_reads_columns_added_after_its_first_parts(tmp_path: Path) -> None:
    """Parts written before a column existed read it as null; the newer parts keep their values
    (pyarrow alone would take the first part's schema and drop the new column everywhere)."""
    import pyarrow as pa

    from synth_pipelines.warehouse.storage import Warehouse

    wh = Warehouse(tmp_path / "wh")
    wh.append_dataset("history", "d", pa.table({"run": ["old"], "calls": [3]}))
    wh.append_dataset("history", "d", pa.table({"run": ["new"], "calls": [5], "billed": [40]}))
    rows = sorted(wh.read_dataset("history").to_pylist(), key=lambda r: r["run"])
    assert rows == [
        {"run": "new", "calls": 5, "billed": 40, "domain": "d"},
        {"run": "old", "calls": 3, "billed": None, "domain": "d"},
    ]
    wh.sync_mirror("history", ["d"])  # the DuckDB mirror gets the new column too
    with wh.duckdb() as conn:
        assert sorted(conn.execute("select run, billed from history").fetchall()) == [
            ("new", 40),
            ("old", None),
        ]


def test_semantic_similarity_embeds_gold_and_predictions_while_the_predictions_run() -> None:
    """``evaluate_program`` hands the gold answers, then each prediction as it arrives, to a
    background embedder with exactly the texts the metric embeds for them; the scores are unchanged
    (issues 25, 26)."""
    import threading

    import numpy as np

    from synth_pipelines.learning.program import build_metric, evaluate_program, make_lm, to_dspy_examples
    from synth_pipelines.llm.embeddings import embed_texts

    spec = _program_spec("semantic_similarity")
    client, _, _ = _program_client("POST")
    program = spec.program_or_default()
    test = to_dspy_examples(_rows(["GET", "DELETE"]), program)
    calls: list[tuple[str, list[str]]] = []

    def recording(texts: list[str]) -> np.ndarray:
        calls.append((threading.current_thread().name, list(texts)))
        return embed_texts(texts)

    metric = build_metric(spec, program, recording, None)
    scores, failures = evaluate_program(
        _compiled(spec), test, make_lm(spec, client, "gen-a"), program, metric, threads=2
    )
    direct = build_metric(spec, program, embed_texts, None)
    gold = [{"a": m} for m in ("GET", "DELETE")]
    assert failures == 0 and scores == pytest.approx(direct([(g, {"a": "POST"}) for g in gold]), abs=1e-5)
    *prefetched, (scored_in, scored) = calls
    assert scored_in == threading.current_thread().name
    assert prefetched and all(name == "synth-embed-prefetch" for name, _ in prefetched)
    early = [text for _, texts in prefetched for text in texts]
    gold_texts = scored[: len(scored) // 2]
    assert early[: len(gold_texts)] == gold_texts  # the gold answers go first
    # The predictions' texts follow as they arrive (identical predictions are embedded once).
    assert early[len(gold_texts) :] == ["a: POST"]
