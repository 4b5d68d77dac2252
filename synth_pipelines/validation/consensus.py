"""Multi-model validation: several weighted judges score each example; the weighted mean is the consensus.

Judges run in descending weight order and stop early once the remaining judges could not change the
outcome (the skipped calls are counted). A judge whose reply cannot be parsed is left out of that
example's consensus, with the reason recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from synth_pipelines.llm.client import LLMClient, run_sync
from synth_pipelines.llm.config import WeightedModel
from synth_pipelines.llm.types import ChatMessage
from synth_pipelines.spec.example_schema import field_guide, json_schema_for_model
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.text import stable_int
from synth_pipelines.validation import judge_prompts

SCALE = (1, 2, 3, 4, 5)
MAX_REASON_CHARS = 120
JUDGE_MAX_TOKENS = 96


# Plain slotted dataclasses, not pydantic models: a validation holds one Consensus and its judges
# per candidate, and at 100,000 candidates pydantic's per-instance dict and fields-set took ~4.5 KB
# a row (~440 MB); slotted, ~1 KB (tests/test_judging.py). Internal values, never parsed from input.
@dataclass(slots=True)
class JudgeScore:
    model: str
    weight: float
    scores: dict[str, float] = field(default_factory=dict)  # criterion -> 0..1
    score: float | None = None  # mean over criteria, 0..1
    reason: str = ""
    error: str | None = None
    error_kind: str | None = None  # "reply" or "provider", as for generation
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    model_calls: int = 0


@dataclass(slots=True)
class Consensus:
    consensus: float | None
    passed: bool
    spread: float | None
    judges: list[JudgeScore]
    skipped_calls: int
    reason: str | None = None


@cache
def verdict_model(criteria: tuple[str, ...]) -> type[BaseModel]:
    """Structured verdict: a short reason, then an integer 1-5 per criterion (all bounded for tiny models).

    The reason comes first on purpose: a model that has written its critique scores more consistently.
    """
    fields: dict[str, Any] = {"reason": (str, Field(min_length=1, max_length=MAX_REASON_CHARS))}
    fields.update({c: (Literal[SCALE], Field(description=f"{c}, 1-5")) for c in criteria})
    return create_model("Verdict", **fields)


@cache
def verdict_schema(criteria: tuple[str, ...]) -> dict[str, Any]:
    """The verdict's JSON schema, built once per criteria list (judging is the hot path)."""
    return json_schema_for_model(verdict_model(criteria))


def resolve_judges(spec: DomainSpec, client: LLMClient) -> list[WeightedModel]:
    """The spec's validators if it names any (each must exist in the profile), else the profile's."""
    if not spec.validation.validators:
        judges = list(client.profile.roles.validators)
    else:
        unknown = [v.model for v in spec.validation.validators if v.model not in client.profile.models]
        if unknown:
            raise ValueError(
                f"validation.validators in the {spec.domain!r} spec names models {unknown} that the provider "
                f"profile {client.profile.name!r} does not define; defined: {sorted(client.profile.models)}"
            )
        judges = [WeightedModel(model=v.model, weight=v.weight) for v in spec.validation.validators]
    return sorted(judges, key=lambda j: -j.weight)


def weighted_mean(judges: list[JudgeScore]) -> float | None:
    scored = [j for j in judges if j.score is not None]
    total = sum(j.weight for j in scored)
    if not scored or total <= 0:
        return None
    return sum(j.weight * (j.score or 0.0) for j in scored) / total


def outcome_decided(done: list[JudgeScore], remaining_weight: float, threshold: float) -> bool:
    """True when no scores from the remaining judges could move the consensus across ``threshold``."""
    scored = [j for j in done if j.score is not None]
    w = sum(j.weight for j in scored)
    if w <= 0 or remaining_weight <= 0:
        return remaining_weight <= 0
    s = sum(j.weight * (j.score or 0.0) for j in scored)
    worst = s / (w + remaining_weight)
    best = (s + remaining_weight) / (w + remaining_weight)
    return worst >= threshold or best < threshold


def judge_criteria(spec: DomainSpec, extra: list[str] | None = None) -> list[str]:
    """What the judges score: the spec's criteria, any ``extra`` ones, and always cross-field
    consistency (each once, in that order)."""
    names = [*spec.validation.criteria, *(extra or []), judge_prompts.CONSISTENCY_CRITERION]
    return list(dict.fromkeys(names))


def judge_messages(
    spec: DomainSpec,
    problem: str,
    example: dict[str, Any],
    criteria: list[str] | None = None,
    conditions: dict[str, Any] | None = None,
) -> list[ChatMessage]:
    """The judge prompt: the spec's task and field guide, the problem and conditions the example
    was written for (an empty ``problem``: a row from outside the pipeline), the example, and the
    criteria with a note on each that needs one."""
    names = criteria or judge_criteria(spec)
    if problem.strip():
        shown = ", ".join(f"{k}={v}" for k, v in sorted((conditions or {}).items())) or "none"
        problem_block = judge_prompts.PROBLEM_BLOCK.format(problem=problem, conditions=shown)
    else:
        problem_block = judge_prompts.NO_PROBLEM_BLOCK
    notes = "".join(
        f"{judge_prompts.CRITERIA_NOTES[c]}\n" for c in names if c in judge_prompts.CRITERIA_NOTES
    )
    return [
        ChatMessage(role="system", content=judge_prompts.VALIDATE_SYSTEM.format(domain=spec.domain)),
        ChatMessage(
            role="user",
            content=judge_prompts.VALIDATE_USER.format(
                description=spec.description,
                field_guide=field_guide(spec),
                problem_block=problem_block,
                example=json.dumps(example, ensure_ascii=False),
                criteria=", ".join(names),
                criteria_notes=notes,
            ).rstrip(),
        ),
    ]


async def ajudge_one(
    client: LLMClient,
    judge: WeightedModel,
    spec: DomainSpec,
    messages: list[ChatMessage],
    example_id: str,
    criteria: list[str] | None = None,
) -> JudgeScore:
    names = tuple(criteria or judge_criteria(spec))
    model_cls = verdict_model(names)
    result = await client.astructured(
        [judge.model],
        messages,
        model_cls,
        json_schema=verdict_schema(names),
        temperature=0.0,
        max_tokens=JUDGE_MAX_TOKENS,
        seed=stable_int(example_id, judge.model),
    )
    rec = result.record
    base = JudgeScore(
        model=judge.model,
        weight=judge.weight,
        prompt_tokens=rec.prompt_tokens,
        completion_tokens=rec.completion_tokens,
        cost_usd=rec.cost_usd,
        model_calls=rec.model_calls,
    )
    if result.value is None:
        base.error = result.error
        base.error_kind = result.failure_kind
        return base
    data = result.value.model_dump()
    base.scores = {c: (int(data[c]) - 1) / (len(SCALE) - 1) for c in names}
    base.score = sum(base.scores.values()) / len(base.scores)
    base.reason = str(data["reason"])
    return base


async def ajudge_example(
    client: LLMClient,
    spec: DomainSpec,
    judges: list[WeightedModel],
    *,
    example_id: str,
    problem: str,
    example: dict[str, Any],
    early_stop: bool = True,
    extra_criteria: list[str] | None = None,
    conditions: dict[str, Any] | None = None,
) -> Consensus:
    """Judges in descending weight, stopping once the rest could not change the outcome.
    ``extra_criteria`` are scored too (an adversarial row's ``hard_but_well_posed``); ``conditions``
    are the matrix cell's, shown with the problem (an empty problem: a row from outside)."""
    threshold = spec.validation.threshold
    criteria = judge_criteria(spec, extra_criteria)
    messages = judge_messages(spec, problem, example, criteria, conditions)
    done: list[JudgeScore] = []
    for i, judge in enumerate(judges):
        remaining = sum(j.weight for j in judges[i:])
        if early_stop and done and outcome_decided(done, remaining, threshold):
            break
        done.append(await ajudge_one(client, judge, spec, messages, example_id, criteria))
    skipped = len(judges) - len(done)
    consensus = weighted_mean(done)
    scores = [j.score for j in done if j.score is not None]
    spread = (max(scores) - min(scores)) if len(scores) >= 2 else (0.0 if scores else None)
    if consensus is None:
        return Consensus(
            consensus=None,
            passed=False,
            spread=None,
            judges=done,
            skipped_calls=skipped,
            reason="no validator could score the example: " + "; ".join(j.error or "" for j in done),
        )
    # Rounded so that a weighted mean equal to the threshold is not lost to float error.
    passed = round(consensus, 9) >= threshold
    reason = None if passed else f"consensus {consensus:.2f} below threshold {threshold:.2f}"
    return Consensus(
        consensus=consensus, passed=passed, spread=spread, judges=done, skipped_calls=skipped, reason=reason
    )


def judge_example(
    client: LLMClient,
    spec: DomainSpec,
    judges: list[WeightedModel],
    *,
    example_id: str,
    problem: str,
    example: dict[str, Any],
    early_stop: bool = True,
    conditions: dict[str, Any] | None = None,
) -> Consensus:
    """Blocking :func:`ajudge_example` (for DSPy's metric and other synchronous callers)."""
    return run_sync(
        ajudge_example(
            client,
            spec,
            judges,
            example_id=example_id,
            problem=problem,
            example=example,
            early_stop=early_stop,
            conditions=conditions,
        )
    )
