"""The token-probability judge signals that `make bench-judges` measures: their arithmetic on a
scripted model, and the llama.cpp primitives they read on the bundled SmolLM2."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from synth_pipelines.llm.types import ChatMessage
from synth_pipelines.spec.loading import load_spec
from synth_pipelines.validation.signals import (
    expected_rating,
    first_token_ids,
    mean_logprob,
    pairwise_preference,
    yes_probability,
)

VOCAB = ["<pad>", "yes", " yes", "Yes", "no", " no", "No", "1", "2", "3", "4", "5", "A", "B", " ", "x"]
SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


class ScriptedLikelihood:
    """A one-token-per-word vocabulary; the next-token distribution is set per prompt substring."""

    name = "scripted"

    def __init__(self, probabilities: dict[str, dict[str, float]]):
        self.probabilities = probabilities
        self.prompts: list[str] = []

    def render_prompt(self, messages: tuple[ChatMessage, ...]) -> str:
        return "\n".join(m.content for m in messages) + "\nAnswer:\n"

    def token_ids(self, text: str) -> list[int]:
        if text in VOCAB:
            return [VOCAB.index(text)]
        return [VOCAB.index(" "), VOCAB.index("x")]  # several tokens: not a single-token spelling

    def next_token_logprobs(self, prompt: str) -> np.ndarray:
        self.prompts.append(prompt)
        for marker, table in self.probabilities.items():
            if marker in prompt:
                p = np.full(len(VOCAB), 1e-12)
                for token, value in table.items():
                    p[VOCAB.index(token)] = value
                return np.log(p / p.sum())
        return np.log(np.full(len(VOCAB), 1 / len(VOCAB)))

    def continuation_logprobs(self, prompt: str, continuation: str) -> list[float]:
        return [math.log(0.5)] * len(continuation.split())


@pytest.fixture
def spec():  # type: ignore[no-untyped-def]
    return load_spec(SCHEMAS / "api_development.yaml").spec


def test_first_token_ids_keep_only_single_token_spellings() -> None:
    model = ScriptedLikelihood({})
    assert first_token_ids(model, ["yes"]) == {VOCAB.index(t) for t in ("yes", " yes", "Yes")}
    assert first_token_ids(model, ["1"]) == {VOCAB.index("1")}  # " 1" is two tokens: left out


def test_yes_probability_normalizes_over_yes_and_no(spec) -> None:  # type: ignore[no-untyped-def]
    model = ScriptedLikelihood({"yes or no": {"Yes": 0.3, " yes": 0.1, "No": 0.1, "x": 0.5}})
    assert yes_probability(model, spec, "List users", {"method": "GET"}) == pytest.approx(0.8, abs=1e-6)
    assert "List users" in model.prompts[0]


def test_expected_rating_is_the_mean_digit_scaled_to_unit(spec) -> None:  # type: ignore[no-untyped-def]
    model = ScriptedLikelihood({"one digit": {"5": 0.5, "3": 0.5}})
    assert expected_rating(model, spec, "p", {}) == pytest.approx(0.75, abs=1e-6)  # E=4 -> (4-1)/4
    flat = ScriptedLikelihood({"one digit": {"x": 1.0}})
    assert expected_rating(flat, spec, "p", {}) == pytest.approx(0.5, abs=1e-3)


def test_pairwise_preference_cancels_position_bias(spec) -> None:  # type: ignore[no-untyped-def]
    # A model that always answers "A" prefers nobody once both orders are asked.
    biased = ScriptedLikelihood({"A or B": {"A": 1.0}})
    assert pairwise_preference(biased, spec, ("p", {"task": "c"}), ("q", {"task": "r"})) == pytest.approx(0.5)
    assert len(biased.prompts) == 2 and biased.prompts[0] != biased.prompts[1]


def test_mean_logprob_averages_per_token(spec) -> None:  # type: ignore[no-untyped-def]
    model = ScriptedLikelihood({})
    assert mean_logprob(model, "p", {"task": "a b c"}) == pytest.approx(math.log(0.5))


def test_llama_backend_logprobs_are_a_distribution_and_rank_continuations() -> None:
    from synth_pipelines.llm.backends import LlamaCppBackend
    from synth_pipelines.llm.config import load_profile

    profile = load_profile("local")
    backend = LlamaCppBackend("smollm2-135m", profile.models["smollm2-135m"])
    prompt = backend.render_prompt((ChatMessage(role="user", content="What is the capital of France?"),))
    assert prompt.endswith("<|im_start|>assistant\n")
    logprobs = backend.next_token_logprobs(prompt)
    assert np.exp(logprobs).sum() == pytest.approx(1.0, abs=1e-4)
    likely = backend.continuation_logprobs(prompt, "The capital of France is Paris.")
    unlikely = backend.continuation_logprobs(prompt, "Purple elephant gravel seventeen spoon.")
    assert len(likely) == len(backend.token_ids("The capital of France is Paris."))
    assert sum(likely) / len(likely) > sum(unlikely) / len(unlikely) + 1.0
