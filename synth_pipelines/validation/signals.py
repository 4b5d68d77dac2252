"""Judge signals read from token probabilities of an embedded (llama.cpp) model, instead of from
the text it samples. ``make bench-judges`` measures each against hand labels; only the ones that
raise Cohen's kappa are used by the gate (see docs/quality.md).

* :func:`yes_probability`: P(yes) / (P(yes) + P(no)) for the next token after the judge prompt and
  "Is the example a correct answer to the problem? Answer yes or no."
* :func:`expected_rating`: the expected 1-5 rating under the next-token distribution over the
  digits, scaled to 0..1 (instead of the one digit a greedy decode writes).
* :func:`mean_logprob`: the mean per-token log-likelihood of the example's text after its problem,
  under a base model (minus the log-perplexity: fluent, on-topic text scores higher).
* :func:`pairwise_preference`: P(the example is preferred) over a known-good example of the same
  domain, asked in both orders so that the model's position bias cancels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from synth_pipelines.llm.types import ChatMessage
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.text import example_text
from synth_pipelines.validation import judge_prompts
from synth_pipelines.validation.consensus import judge_messages


class LikelihoodModel(Protocol):
    """What a signal needs from a model: its prompt rendering and its token probabilities
    (:class:`synth_pipelines.llm.backends.LlamaCppBackend` provides it)."""

    name: str

    def render_prompt(self, messages: tuple[ChatMessage, ...]) -> str: ...

    def token_ids(self, text: str) -> list[int]: ...

    def next_token_logprobs(self, prompt: str) -> np.ndarray: ...

    def continuation_logprobs(self, prompt: str, continuation: str) -> list[float]: ...


YES_NO_QUESTION = (
    "Is the example correct, on topic, and do its fields agree with each other? Answer yes or no."
)
RATING_QUESTION = "Rate the example from 1 (wrong or nonsense) to 5 (excellent). Answer with one digit."
PAIRWISE_QUESTION = "Which example is the better answer to its problem, A or B? Answer A or B."


def _variants(word: str) -> list[str]:
    return [word, f" {word}", word.capitalize(), f" {word.capitalize()}", word.upper(), f" {word.upper()}"]


def first_token_ids(model: LikelihoodModel, words: Iterable[str]) -> set[int]:
    """The tokens that spell one of ``words`` on their own (yes, " yes", "Yes", ...). A spelling
    that takes several tokens is left out: its first token (often a bare space) would be shared
    with the other answers and blur them."""
    ids: set[int] = set()
    for word in words:
        for spelling in _variants(word):
            tokens = model.token_ids(spelling)
            if len(tokens) == 1:
                ids.add(tokens[0])
    return ids


def probability_mass(logprobs: np.ndarray, ids: Iterable[int]) -> float:
    return float(sum(math.exp(logprobs[i]) for i in set(ids)))


def _judge_prompt(
    model: LikelihoodModel,
    spec: DomainSpec,
    problem: str,
    example: dict[str, Any],
    ask: str,
    conditions: dict[str, Any] | None = None,
) -> str:
    """The panel's judge prompt (``consensus.judge_messages``), with ``ask`` as its last line."""
    system, user = judge_messages(spec, problem, example, conditions=conditions)
    messages = (system, ChatMessage(role="user", content=f"{user.content}\n{ask}"))
    # The rendered prompt ends where the reply starts (the assistant turn, or 'Answer:' for a base
    # model), so the next token is the answer itself.
    return model.render_prompt(messages)


def yes_probability(
    model: LikelihoodModel,
    spec: DomainSpec,
    problem: str,
    example: dict[str, Any],
    conditions: dict[str, Any] | None = None,
) -> float:
    """P(yes) among {yes, no} for the next token (0.5 when the model puts no mass on either)."""
    logprobs = model.next_token_logprobs(
        _judge_prompt(model, spec, problem, example, YES_NO_QUESTION, conditions)
    )
    yes = probability_mass(logprobs, first_token_ids(model, ["yes"]))
    no = probability_mass(logprobs, first_token_ids(model, ["no"]))
    return 0.5 if yes + no <= 0 else yes / (yes + no)


def expected_rating(
    model: LikelihoodModel,
    spec: DomainSpec,
    problem: str,
    example: dict[str, Any],
    conditions: dict[str, Any] | None = None,
) -> float:
    """The expected rating under the next-token probabilities of the digits 1-5, scaled to 0..1."""
    logprobs = model.next_token_logprobs(
        _judge_prompt(model, spec, problem, example, RATING_QUESTION, conditions)
    )
    mass = [probability_mass(logprobs, first_token_ids(model, [str(d)])) for d in range(1, 6)]
    total = sum(mass)
    if total <= 0:
        return 0.5
    return sum(d * m for d, m in enumerate(mass)) / total / 4


def mean_logprob(model: LikelihoodModel, problem: str, example: dict[str, Any]) -> float:
    """Mean log-likelihood per token of the example's text after its problem (higher = more
    fluent and more expected given the problem; minus the log-perplexity)."""
    logprobs = model.continuation_logprobs(f"Problem: {problem}\nAnswer:\n", example_text(example))
    return sum(logprobs) / len(logprobs) if logprobs else float("-inf")


def _pairwise_prompt(
    model: LikelihoodModel, spec: DomainSpec, a: tuple[str, dict[str, Any]], b: tuple[str, dict[str, Any]]
) -> str:
    def block(label: str, item: tuple[str, dict[str, Any]]) -> str:
        return f"Example {label}\nProblem: {item[0]}\nAnswer: {json.dumps(item[1], ensure_ascii=False)}"

    messages = (
        ChatMessage(role="system", content=judge_prompts.VALIDATE_SYSTEM.format(domain=spec.domain)),
        ChatMessage(
            role="user",
            content=f"Task: {spec.description}\n{block('A', a)}\n{block('B', b)}\n{PAIRWISE_QUESTION}",
        ),
    )
    # The rendered prompt ends where the reply starts (the assistant turn, or 'Answer:' for a base
    # model), so the next token is the answer itself.
    return model.render_prompt(messages)


def pairwise_preference(
    model: LikelihoodModel,
    spec: DomainSpec,
    candidate: tuple[str, dict[str, Any]],
    reference: tuple[str, dict[str, Any]],
) -> float:
    """P(candidate preferred over a known-good reference), each item a (problem, example) pair,
    averaged over both presentation orders."""
    a_ids, b_ids = first_token_ids(model, ["A"]), first_token_ids(model, ["B"])

    def p_first(prompt: str) -> float:
        logprobs = model.next_token_logprobs(prompt)
        a, b = probability_mass(logprobs, a_ids), probability_mass(logprobs, b_ids)
        return 0.5 if a + b <= 0 else a / (a + b)

    first = p_first(_pairwise_prompt(model, spec, candidate, reference))
    second = 1.0 - p_first(_pairwise_prompt(model, spec, reference, candidate))
    return (first + second) / 2
