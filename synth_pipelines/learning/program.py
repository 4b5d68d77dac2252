"""The domain's DSPy program: a typed signature from the spec's program inputs -> outputs, compiled on a
train split of validated examples, scored on the held-out split, saved as DSPy state JSON."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from synth_pipelines.learning.dspy_lm import ProviderLM, dspy
from synth_pipelines.llm.client import LLMClient
from synth_pipelines.spec.example_schema import example_json_schema, example_model
from synth_pipelines.spec.model import DomainSpec, ProgramSpec
from synth_pipelines.spec.text import example_text, normalize_text, stable_hash
from synth_pipelines.warehouse.storage import StoragePath, atomic_write_bytes


class ProgramScore(BaseModel):
    metric: str
    optimizer: str
    score: float
    n_train: int
    n_test: int
    per_example: list[float]
    failures: int
    lm_calls: int


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


def to_dspy_examples(rows: list[dict[str, Any]], program: ProgramSpec) -> list[dspy.Example]:
    out = []
    for row in rows:
        ex = row["example"]
        fields = {k: ex.get(k) for k in [*program.inputs, *program.outputs]}
        out.append(dspy.Example(**fields).with_inputs(*program.inputs))
    return out


def _outputs_text(values: dict[str, Any], outputs: list[str]) -> str:
    return example_text(values, outputs)


def build_metric(
    spec: DomainSpec,
    program: ProgramSpec,
    embed: Callable[[list[str]], np.ndarray] | None,
    judge: Callable[[dict[str, Any], dict[str, Any]], float] | None,
) -> Callable[[dict[str, Any], dict[str, Any]], float]:
    """metric(gold_fields, predicted_fields) -> 0..1 for the spec's chosen metric."""
    outputs = program.outputs
    if program.metric == "exact_match":
        return lambda gold, pred: float(
            all(
                normalize_text(json.dumps(gold.get(f), sort_keys=True))
                == normalize_text(json.dumps(pred.get(f), sort_keys=True))
                for f in outputs
            )
        )
    if program.metric == "semantic_similarity":
        if embed is None:
            raise ValueError("semantic_similarity needs an embedder")

        def semantic(gold: dict[str, Any], pred: dict[str, Any]) -> float:
            vecs = embed([_outputs_text(gold, outputs), _outputs_text(pred, outputs)])
            return float(max(0.0, min(1.0, float(vecs[0] @ vecs[1]))))

        return semantic
    if judge is None:
        raise ValueError("llm_judge needs a judge")
    return judge


def compile_program(
    spec: DomainSpec,
    train: list[dspy.Example],
    lm: ProviderLM,
    metric: Callable[[dict[str, Any], dict[str, Any]], float],
) -> DomainProgram:
    program_spec = spec.program_or_default()
    student = DomainProgram(make_signature(spec, program_spec))
    k = min(program_spec.max_demos, len(train))
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        if program_spec.optimizer == "labeled_few_shot":
            return dspy.LabeledFewShot(k=k).compile(student, trainset=train)
        outs = program_spec.outputs

        def dspy_metric(example: Any, pred: Any, trace: Any = None) -> float:
            return metric({f: example.get(f) for f in outs}, {f: getattr(pred, f, None) for f in outs})

        if program_spec.optimizer == "bootstrap_few_shot":
            optimizer = dspy.BootstrapFewShot(
                metric=dspy_metric, max_bootstrapped_demos=k, max_labeled_demos=k
            )
            return optimizer.compile(student, trainset=train)
        optimizer = dspy.MIPROv2(metric=dspy_metric, auto="light", num_threads=1)
        return optimizer.compile(student, trainset=train, max_bootstrapped_demos=k, max_labeled_demos=k)


def evaluate_program(
    compiled: DomainProgram,
    test: list[dspy.Example],
    lm: ProviderLM,
    program: ProgramSpec,
    metric: Callable[[dict[str, Any], dict[str, Any]], float],
) -> tuple[list[float], int]:
    """Score every held-out example; a prediction that fails to parse scores 0 and is counted."""
    scores: list[float] = []
    failures = 0
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        for ex in test:
            try:
                pred = compiled(**ex.inputs().toDict())
                predicted = {f: getattr(pred, f, None) for f in program.outputs}
            except Exception:  # DSPy raises AdapterParseError etc. on an unusable reply
                failures += 1
                scores.append(0.0)
                continue
            gold = {f: ex.get(f) for f in program.outputs}
            scores.append(metric(gold, _jsonable(predicted)))
    return scores, failures


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.model_dump(mode="json") if isinstance(v, BaseModel) else v) for k, v in values.items()}


def make_lm(spec: DomainSpec, client: LLMClient, model: str) -> ProviderLM:
    program = spec.program_or_default()
    schema = example_json_schema(spec)
    return ProviderLM(
        client, model, field_schemas=schema.get("properties", {}), output_fields=program.outputs
    )


def save_program(compiled: DomainProgram, path: StoragePath) -> StoragePath:
    """Save DSPy *state* as JSON (never pickle), atomically, to a local path or an object store.

    DSPy only writes local files, so the state goes through a temporary file first."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "program.json"
        compiled.save(str(local), save_program=False)
        atomic_write_bytes(path, local.read_bytes())
    return path


def load_program(spec: DomainSpec, path: StoragePath) -> DomainProgram:
    program = DomainProgram(make_signature(spec, spec.program_or_default()))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "program.json"
        local.write_bytes(path.read_bytes())
        program.load(str(local))
    return program
