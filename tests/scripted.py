"""A scripted LLM backend for unit tests: it stands in for a provider and answers any JSON schema.

Replies are derived deterministically from the request (schema, seed, prompt), so tests are
repeatable; ``script`` can override replies to inject broken JSON, schema violations or errors.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable

from synth_pipelines.llm.config import ModelConfig, ProviderProfile, Roles, WeightedModel
from synth_pipelines.llm.types import CompletionRequest, ProviderError, RawCompletion
from synth_pipelines.testing.schema_values import instance_from_schema


class ScriptedBackend:
    """Answers from the schema; ``script(request, call_no)`` may return a text or raise to inject faults."""

    def __init__(
        self,
        name: str,
        script: Callable[[CompletionRequest, int], str | None] | None = None,
        judge_score: int | None = None,
    ):
        self.name = name
        self.script = script
        self.judge_score = judge_score
        self.calls = 0
        self.requests: list[CompletionRequest] = []

    def fingerprint(self) -> str:
        return f"scripted:{self.name}"

    def complete(self, request: CompletionRequest) -> RawCompletion:
        self.calls += 1
        self.requests.append(request)
        if self.script is not None:
            scripted = self.script(request, self.calls)
            if scripted is not None:
                return RawCompletion(text=scripted, prompt_tokens=10, completion_tokens=5)
        digest = hashlib.sha256(json.dumps([m.content for m in request.messages]).encode()).hexdigest()
        rng = random.Random(f"{digest}:{request.seed}")
        value = instance_from_schema(request.json_schema or {"type": "string"}, rng)
        if self.judge_score is not None and isinstance(value, dict) and "reason" in value:
            value = {k: (self.judge_score if k != "reason" else v) for k, v in value.items()}
        text = json.dumps(value)
        return RawCompletion(text=text, prompt_tokens=50, completion_tokens=len(text) // 4)


def failing(
    model: str, *, retryable: bool = True, retry_after: float | None = None, status: int = 500
) -> Callable[..., str | None]:
    kind = "rate_limit" if status == 429 else "http"

    def script(request: CompletionRequest, call_no: int) -> str | None:
        raise ProviderError(model, f"HTTP {status}", retryable=retryable, retry_after=retry_after, kind=kind)

    return script


def scripted_profile(
    generator: list[str] | None = None, validators: list[tuple[str, float]] | None = None
) -> ProviderProfile:
    generator = generator or ["gen-a", "gen-b"]
    validators = validators or [("judge-a", 1.0), ("judge-b", 0.7)]
    names = {*generator, *(v for v, _ in validators)}
    models = {
        n: ModelConfig(
            kind="openai",
            base_url="http://127.0.0.1:9/v1",
            model_id=n,
            max_retries=2,
            input_price_per_mtok=1.0,
            output_price_per_mtok=2.0,
        )
        for n in sorted(names)
    }
    return ProviderProfile(
        name="scripted",
        models=models,
        roles=Roles(
            generator=generator,
            validators=[WeightedModel(model=m, weight=w) for m, w in validators],
            program=generator[0],
        ),
    )
