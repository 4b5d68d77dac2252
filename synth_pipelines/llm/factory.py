"""Build backends and clients from a profile. Backends are cached per process so a model loads once."""

from __future__ import annotations

import threading
from pathlib import Path

from synth_pipelines.llm.backends import Backend, LlamaCppBackend, OpenAICompatBackend
from synth_pipelines.llm.cache import ResponseCache
from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.config import ModelConfig, ProviderProfile

_BACKENDS: dict[tuple[str, str], Backend] = {}
_LOCK = threading.Lock()


def backend_for(name: str, config: ModelConfig, api_key: str | None = None) -> Backend:
    key = (name, config.model_dump_json())
    with _LOCK:
        if key not in _BACKENDS:
            if config.kind == "llama_cpp":
                _BACKENDS[key] = LlamaCppBackend(name, config)
            else:
                _BACKENDS[key] = OpenAICompatBackend(name, config, api_key)
        return _BACKENDS[key]


def build_client(
    profile: ProviderProfile,
    cache_path: str | Path | None,
    *,
    api_key: str | None = None,
    budget_usd: float | None = None,
    budget_tokens: int | None = None,
    parse_attempts: int = 2,
) -> LLMClient:
    backends = {name: backend_for(name, cfg, api_key) for name, cfg in profile.models.items()}
    cache = ResponseCache(cache_path) if cache_path is not None else None
    return LLMClient(
        profile,
        backends,
        cache,
        parse_attempts=parse_attempts,
        budget_usd=budget_usd,
        budget_tokens=budget_tokens,
    )
