"""The domain's DSPy program: a typed signature from the spec's program inputs -> outputs, compiled on a
train split of validated examples, scored on a sample of the held-out split, saved as DSPy state JSON.

Scoring is concurrent (a thread per in-flight call, up to the program model's concurrency) and the
metric works on the whole sample at once (one embedding batch for semantic similarity), so it costs
about ``sample / concurrency`` round trips however large the domain. The score comes with a 95%
confidence interval. A provider failure stops the run; only a reply DSPy cannot parse scores 0, and
those are counted apart.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from synth_pipelines.learning.dspy_lm import ProviderLM, dspy
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.client import BudgetExhausted, LLMClient
from synth_pipelines.llm.embedding_prefetch import EmbeddingPrefetcher
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.spec.example_schema import example_json_schema, example_model
from synth_pipelines.spec.model import DomainSpec, ProgramSpec
from synth_pipelines.spec.text import example_text, normalize_text, stable_hash
from synth_pipelines.warehouse.storage import StoragePath, atomic_write_bytes

# Errors that mean "no answer", not "a bad answer": they stop compilation and scoring.
PROVIDER_ERRORS = (ProviderError, ProviderConfigError, BudgetExhausted)

GoldPred = tuple[dict[str, Any], dict[str, Any]]
# Most threads DSPy gets for concurrent predictions (the model's own concurrency is the real limit).
MAX_PROGRAM_THREADS = 32
# How long evaluation waits for the background embedder to finish the last predictions' texts
# before the metric embeds what is left itself.
PREDICTION_DRAIN_S = 120.0
BatchMetric = Callable[[Sequence[GoldPred]], list[float]]


class ProgramScore(BaseModel):
    """The held-out score of a compiled program, with its uncertainty."""

    metric: str
    optimizer: str
    score: float
    ci_low: float | None
    ci_high: float | None
    n_train: int
    n_heldout: int
    n_eval: int
    per_example: list[float]
    parse_failures: int
    lm_calls: int


# The program's inputs are fields of validated examples, already checked against the same pydantic
# model its signature is built from; they arrive as JSON values (a nested object as a dict), which
# DSPy's type check takes for a mismatch and warns about on every call (seen on a spec with an
# array of objects). The check is off where this module calls the program, nowhere else.
VALIDATED_INPUTS: dict[str, Any] = {"warn_on_type_mismatch": False}


def make_signature(spec: DomainSpec, program: ProgramSpec) -> type[dspy.Signature]:
    """A class-based typed Signature: field types come from the spec's compiled example model."""
    model_fields = example_model(spec).model_fields
    annotations: dict[str, Any] = {}
    attrs: dict[str, Any] = {"__doc__": f"{spec.description.strip()} ({spec.type})"}
    for name in program.inputs:
        annotations[name] = model_fields[name].annotation
        attrs[name] = dspy.InputField(desc=spec.fields[name].description or name)
    for name in program.outputs:
        annotations[name] = model_fields[name].annotation
        attrs[name] = dspy.OutputField(desc=spec.fields[name].description or name)
    attrs["__annotations__"] = annotations
    class_name = "".join(p.title() for p in spec.domain.split("_")) + "Task"
    return type(class_name, (dspy.Signature,), attrs)


class DomainProgram(dspy.Module):
    """Predicts a domain example's output fields from its input fields."""

    def __init__(self, signature: type[dspy.Signature]):
        super().__init__()
        self.predict = dspy.Predict(signature)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        return self.predict(**inputs)


def split_examples(
    examples: list[dict[str, Any]], train_fraction: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic split by example-id hash (stable across reruns and row order)."""
    ordered = sorted(examples, key=lambda e: stable_hash(e["example_id"]))
    if len(ordered) < 2:
        raise ValueError(
            f"need at least 2 validated examples to compile and score a program, have {len(ordered)}"
        )
    n_train = min(len(ordered) - 1, max(1, round(len(ordered) * train_fraction)))
    return ordered[:n_train], ordered[n_train:]


def stratified_sample(rows: list[dict[str, Any]], size: int, *, key: str = "cell_id") -> list[dict[str, Any]]:
    """At most ``size`` rows, each ``key`` group (matrix cell) represented in proportion to its size
    (largest remainder), rows within a group in hash order: deterministic, and no cell is crowded
    out by a big one."""
    if len(rows) <= size:
        return list(rows)
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: stable_hash(r["example_id"])):
        groups.setdefault(row.get(key), []).append(row)
    names = sorted(groups, key=str)
    quotas = [size * len(groups[g]) / len(rows) for g in names]
    take = [math.floor(q) for q in quotas]
    for i in sorted(range(len(names)), key=lambda i: (-(quotas[i] - take[i]), str(names[i])))[
        : size - sum(take)
    ]:
        take[i] += 1
    picked = [row for g, k in zip(names, take, strict=True) for row in groups[g][:k]]
    return sorted(picked, key=lambda r: stable_hash(r["example_id"]))


def mean_ci(scores: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """Mean and its two-sided ``confidence`` interval (Student's t), clipped to [0, 1]."""
    n = len(scores)
    if n == 0:
        raise ValueError("no scores to summarize")
    mean = float(np.mean(scores))
    if n < 2:
        return mean, None, None
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * float(np.std(scores, ddof=1)) / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def example_rows(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """``example_id``, ``cell_id`` and the parsed example of each validated row (the columns
    ``example_id``, ``cell_id``, ``example_json`` as lists): what training reads."""
    return [
        {"example_id": eid, "cell_id": cell, "example": json.loads(text)}
        for eid, cell, text in zip(
            columns["example_id"], columns["cell_id"], columns["example_json"], strict=True
        )
    ]


def performance_row(domain: str, source: str, run_id: str, score: ProgramScore) -> dict[str, Any]:
    """The ``agent_performance`` row of a held-out score (``record_performance`` appends it)."""
    return {
        "domain": domain,
        "source": source,
        "score": score.score,
        "n": score.n_eval,
        "metric": score.metric,
        "run_id": run_id,
        "recorded_at": datetime.now(UTC).replace(tzinfo=None),
        "ci_low": score.ci_low,
        "ci_high": score.ci_high,
        "parse_failures": score.parse_failures,
    }


def to_dspy_examples(rows: list[dict[str, Any]], program: ProgramSpec) -> list[dspy.Example]:
    out = []
    for row in rows:
        ex = row["example"]
        fields = {k: ex.get(k) for k in [*program.inputs, *program.outputs]}
        out.append(dspy.Example(**fields).with_inputs(*program.inputs))
    return out


def predicted_fields(prediction: Any, fields: Sequence[str]) -> dict[str, Any]:
    """The predicted value of each field, read from the prediction's own store: an attribute lookup
    would return the Prediction's method for a field named ``copy``, ``items``, ``keys``, ``get`` or
    ``values`` (seen: a spec with a ``copy`` field crashed the compile on serializing a method)."""
    return {f: prediction.get(f, None) for f in fields}


def _outputs_text(values: dict[str, Any], outputs: list[str]) -> str:
    return example_text(values, outputs)


def build_metric(
    spec: DomainSpec,
    program: ProgramSpec,
    embed: Callable[[list[str]], np.ndarray] | None,
    judge: BatchMetric | None,
) -> BatchMetric:
    """metric([(gold_fields, predicted_fields), ...]) -> a 0..1 score per pair, for the spec's metric.

    Batched on purpose: semantic similarity embeds every gold and predicted text in one call, and
    an LLM judge scores the pairs concurrently.
    """
    outputs = program.outputs
    if program.metric == "exact_match":

        def exact(pairs: Sequence[GoldPred]) -> list[float]:
            return [
                float(
                    all(
                        normalize_text(json.dumps(gold.get(f), sort_keys=True))
                        == normalize_text(json.dumps(pred.get(f), sort_keys=True))
                        for f in outputs
                    )
                )
                for gold, pred in pairs
            ]

        return exact
    if program.metric == "semantic_similarity":
        if embed is None:
            raise ValueError("semantic_similarity needs an embedder")

        def semantic(pairs: Sequence[GoldPred]) -> list[float]:
            if not pairs:
                return []
            texts = [_outputs_text(g, outputs) for g, _ in pairs] + [
                _outputs_text(p, outputs) for _, p in pairs
            ]
            vectors = embed(texts)
            gold, pred = vectors[: len(pairs)], vectors[len(pairs) :]
            return np.clip(np.einsum("ij,ij->i", gold, pred), 0.0, 1.0).astype(float).tolist()

        # evaluate_program embeds these texts (gold answers first, then each prediction as it
        # arrives) into the cached embedder while the model calls run, so the batch above finds
        # them cached.
        semantic.texts_of = lambda values: _outputs_text(values, outputs)  # type: ignore[attr-defined]
        semantic.embed = embed  # type: ignore[attr-defined]
        return semantic
    if judge is None:
        raise ValueError("llm_judge needs a judge")
    return judge


def single(metric: BatchMetric) -> Callable[[dict[str, Any], dict[str, Any]], float]:
    """The batch metric for one pair (what DSPy's optimizers call)."""
    return lambda gold, pred: metric([(gold, pred)])[0]


def compile_program(
    spec: DomainSpec,
    train: list[dspy.Example],
    lm: ProviderLM,
    metric: BatchMetric,
    *,
    threads: int = 1,
    student: dspy.Module | None = None,
    program: ProgramSpec | None = None,
    iterations: int | None = None,
) -> dspy.Module:
    """Compile ``student`` (default: the spec's :class:`DomainProgram`) with ``program``'s optimizer
    (default: the spec's). MIPROv2 evaluates with ``threads``; BootstrapFewShot, which DSPy runs one
    example at a time, has its teacher's questions asked concurrently first (see
    :func:`prefetch_bootstrap`) so its own pass is served from the cache. ``iterations`` is
    BootstrapFewShot's ``max_rounds`` and MIPROv2's ``num_trials`` (LabeledFewShot has none)."""
    program_spec = program or spec.program_or_default()
    if student is None:
        student = DomainProgram(make_signature(spec, program_spec))
    k = min(program_spec.max_demos, len(train))
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), **VALIDATED_INPUTS):
        if program_spec.optimizer == "labeled_few_shot":
            return dspy.LabeledFewShot(k=k).compile(student, trainset=train)
        outs = program_spec.outputs
        one = single(metric)

        def dspy_metric(example: Any, pred: Any, trace: Any = None) -> float:
            return one({f: example.get(f) for f in outs}, _jsonable(predicted_fields(pred, outs)))

        if program_spec.optimizer == "bootstrap_few_shot":
            prefetch_bootstrap(student, train[: 2 * max(1, k) + threads], lm, max_labeled=k, threads=threads)
            optimizer = dspy.BootstrapFewShot(
                metric=dspy_metric,
                max_bootstrapped_demos=k,
                max_labeled_demos=k,
                max_errors=len(train) + 1,
                max_rounds=iterations or 1,
            )
            return optimizer.compile(student, trainset=train)
        if iterations:  # a fixed number of trials instead of the "light" preset
            optimizer = dspy.MIPROv2(
                metric=dspy_metric,
                auto=None,
                num_candidates=max(2, min(10, iterations)),
                num_threads=threads,
                verbose=False,
            )
            return optimizer.compile(
                student, trainset=train, num_trials=iterations, max_bootstrapped_demos=k, max_labeled_demos=k
            )
        optimizer = dspy.MIPROv2(metric=dspy_metric, auto="light", num_threads=threads, verbose=False)
        return optimizer.compile(student, trainset=train, max_bootstrapped_demos=k, max_labeled_demos=k)


def prefetch_bootstrap(
    student: dspy.Module, examples: list[dspy.Example], lm: ProviderLM, *, max_labeled: int, threads: int
) -> None:
    """Ask BootstrapFewShot's questions before it does, concurrently, so that they are cached.

    BootstrapFewShot's teacher is the student with ``LabeledFewShot(k=max_labeled)`` demos (a fixed
    seed), asked about each train example with that example left out of its demos. Exactly the same
    requests go out here, on ``threads`` threads, each with its own copy of the teacher; the
    sequential pass that follows then gets every reply from the response cache. A reply DSPy cannot
    parse is left for the real pass to judge; a provider failure stops here.
    """
    if threads <= 1 or not examples:
        return
    teacher = dspy.LabeledFewShot(k=max_labeled).compile(student.reset_copy(), trainset=examples)

    def ask(example: dspy.Example) -> None:
        mine = teacher.deepcopy()
        for _, predictor in mine.named_predictors():
            predictor.demos = [d for d in predictor.demos if d != example]
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), trace=[], **VALIDATED_INPUTS):
            try:
                mine(**example.inputs())
            except PROVIDER_ERRORS:
                raise
            except Exception:  # a reply DSPy cannot parse: cached all the same
                return

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(ask, examples))


def predict_all(
    compiled: dspy.Module,
    examples: list[dspy.Example],
    lm: ProviderLM,
    outputs: list[str],
    *,
    threads: int,
    on_prediction: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any] | None]:
    """The program's predicted output fields for every example (None where DSPy could not parse the
    reply), on ``threads`` threads; ``on_prediction`` sees each parsed one as it arrives. A provider
    failure is raised, never turned into a score."""

    def predict(example: dspy.Example) -> dict[str, Any] | None:
        # dspy.context is per thread: each worker sets its own LM and adapter.
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), **VALIDATED_INPUTS):
            try:
                prediction = compiled(**example.inputs().toDict())
            except PROVIDER_ERRORS:
                raise
            except Exception:  # DSPy raises AdapterParseError etc. on an unusable reply
                return None
        values = _jsonable(predicted_fields(prediction, outputs))
        if on_prediction is not None:
            on_prediction(values)
        return values

    if threads <= 1:
        return [predict(e) for e in examples]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(predict, examples))


def evaluate_program(
    compiled: dspy.Module,
    test: list[dspy.Example],
    lm: ProviderLM,
    program: ProgramSpec,
    metric: BatchMetric,
    *,
    threads: int = 1,
) -> tuple[list[float], int]:
    """Score every example of ``test``; a reply that cannot be parsed scores 0 and is counted.

    A metric that embeds (semantic similarity: ``texts_of`` and ``embed``) has its texts embedded
    into the cached embedder while the predictions wait on the model: the gold answers first, then
    each prediction as it arrives, in a background :class:`EmbeddingPrefetcher`. The metric's own
    batch afterwards finds them cached; whatever the prefetcher failed on (or had no time for within
    ``PREDICTION_DRAIN_S``) the metric embeds itself, so an embedding error surfaces there."""
    gold = [{f: ex.get(f) for f in program.outputs} for ex in test]
    texts_of = getattr(metric, "texts_of", None)
    embed = getattr(metric, "embed", None)
    if texts_of is None or embed is None or not gold:
        predictions = predict_all(compiled, test, lm, program.outputs, threads=threads)
    else:
        with EmbeddingPrefetcher(embed, batch=64) as prefetch:
            prefetch.submit(texts_of(g) for g in gold)
            predictions = predict_all(
                compiled,
                test,
                lm,
                program.outputs,
                threads=threads,
                on_prediction=lambda values: prefetch.submit([texts_of(values)]),
            )
            # The last predictions' texts: the metric would embed them now anyway, same cost.
            prefetch.close(drain_s=PREDICTION_DRAIN_S)
    parsed = [(g, p) for g, p in zip(gold, predictions, strict=True) if p is not None]
    scored = iter(metric(parsed))
    scores = [next(scored) if p is not None else 0.0 for p in predictions]
    return scores, sum(p is None for p in predictions)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    # DSPy parses an object field into a pydantic model, and an array of objects into a list of
    # them (the conversation template's turns): the metric and the stored predictions take JSON.
    return {k: to_jsonable_python(v) for k, v in values.items()}


def program_threads(client: LLMClient) -> int:
    """Threads for compiling and scoring: what the profile's program model can serve at once."""
    return min(MAX_PROGRAM_THREADS, client.concurrency_for([client.profile.roles.program]))


def make_lm(
    spec: DomainSpec, client: LLMClient, model: str, program: ProgramSpec | None = None
) -> ProviderLM:
    program = program or spec.program_or_default()
    schema = example_json_schema(spec)
    return ProviderLM(
        client, model, field_schemas=schema.get("properties", {}), output_fields=program.outputs
    )


def save_program(compiled: dspy.Module, path: StoragePath) -> StoragePath:
    """Save DSPy *state* as JSON (never pickle), atomically, to a local path or an object store.

    DSPy only writes local files, so the state goes through a temporary file first."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "program.json"
        compiled.save(str(local), save_program=False)
        atomic_write_bytes(path, local.read_bytes())
    return path


def load_program(spec: DomainSpec, path: StoragePath, program: dspy.Module | None = None) -> dspy.Module:
    """Load saved state into ``program`` (default: a fresh :class:`DomainProgram` of the spec)."""
    program = program or DomainProgram(make_signature(spec, spec.program_or_default()))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "program.json"
        local.write_bytes(path.read_bytes())
        program.load(str(local))
    return program


def judge_metric(spec: DomainSpec, client: LLMClient) -> BatchMetric:
    """The ``llm_judge`` metric: the validator panel's consensus on gold inputs + predicted outputs."""
    from synth_pipelines.validation.consensus import ajudge_example, resolve_judges

    judges = resolve_judges(spec, client)

    async def judge_pair(pair: GoldPred) -> float:
        gold, pred = pair
        verdict = await ajudge_example(
            client,
            spec,
            judges,
            example_id=json.dumps(gold, sort_keys=True)[:64],
            problem="",  # judged against the spec's description and field meanings
            example={**gold, **pred},
            early_stop=False,
        )
        return verdict.consensus or 0.0

    def judge(pairs: Sequence[GoldPred]) -> list[float]:
        return client.pool(judge_pair, pairs, width=client.concurrency_for(j.model for j in judges))

    return judge


class TrainingRun(BaseModel):
    """What :func:`train_and_score` produced: the compiled module and its held-out score."""

    model_config = {"arbitrary_types_allowed": True}

    compiled: Any
    score: ProgramScore


def train_and_score(
    spec: DomainSpec,
    rows: list[dict[str, Any]],
    client: LLMClient,
    program: ProgramSpec,
    *,
    embed: Callable[[list[str]], np.ndarray] | None,
    student: dspy.Module | None = None,
    threads: int = 1,
    iterations: int | None = None,
    metric: BatchMetric | None = None,
) -> TrainingRun:
    """Split ``rows`` (``example_id``, ``cell_id``, ``example``) by id hash, compile ``student`` on a
    stratified sample of the train split, score it on a stratified sample of the held-out split, and
    return both. ``metric`` overrides the program's named metric (a user's own function).

    Raises ValueError with fewer than 2 rows, and the provider's errors (never turned into a score)."""
    train_rows, test_rows = split_examples(rows, program.train_fraction)
    lm = make_lm(spec, client, client.profile.roles.program, program)
    if metric is None:
        judge = judge_metric(spec, client) if program.metric == "llm_judge" else None
        metric = build_metric(spec, program, embed, judge)
    train = to_dspy_examples(stratified_sample(train_rows, program.train_sample), program)
    test = to_dspy_examples(stratified_sample(test_rows, program.eval_sample), program)
    try:
        compiled = compile_program(
            spec, train, lm, metric, threads=threads, student=student, program=program, iterations=iterations
        )
        per_example, parse_failures = evaluate_program(compiled, test, lm, program, metric, threads=threads)
    finally:
        client.flush()
    mean, low, high = mean_ci(per_example)
    score = ProgramScore(
        metric=program.metric,
        optimizer=program.optimizer,
        score=mean,
        ci_low=low,
        ci_high=high,
        n_train=len(train_rows),
        n_heldout=len(test_rows),
        n_eval=len(test),
        per_example=per_example,
        parse_failures=parse_failures,
        lm_calls=lm.calls,
    )
    return TrainingRun(compiled=compiled, score=score)
