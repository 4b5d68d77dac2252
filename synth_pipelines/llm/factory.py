"""Build backends and clients from a profile. Backends are cached per process so a model loads once."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import threading
from pathlib import Path

from synth_pipelines.llm.backends import AiohttpChatBackend, Backend, LlamaCppBackend, OpenAICompatBackend
from synth_pipelines.llm.cache import open_response_cache
from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.config import ModelConfig, ProviderProfile
from synth_pipelines.llm.redis_state import is_redis_url
from synth_pipelines.llm.router import Strategy
from synth_pipelines.llm.structured import ModeMemory

_BACKENDS: dict[tuple[str, str], Backend] = {}
_LOCK = threading.Lock()


def backend_for(name: str, config: ModelConfig, api_key: str | None = None) -> Backend:
    """The backend of one model. An endpoint model's key is the variable its ``api_key_env`` names
    when that is set, else ``api_key`` (the resource's), so one profile can mix providers."""
    if config.api_key_env and os.environ.get(config.api_key_env):
        api_key = os.environ[config.api_key_env]
    # The key's hash (not the key) separates backends built with different credentials.
    key_id = hashlib.sha256((api_key or "").encode()).hexdigest()[:12]
    key = (name, config.model_dump_json() + key_id)
    with _LOCK:
        if key not in _BACKENDS:
            if config.kind == "llama_cpp":
                _BACKENDS[key] = LlamaCppBackend(name, config)
            elif config.transport == "sdk":
                _BACKENDS[key] = OpenAICompatBackend(name, config, api_key)
            else:
                _BACKENDS[key] = AiohttpChatBackend(name, config, api_key)
        return _BACKENDS[key]


def build_client(
    profile: ProviderProfile,
    cache_path: str | Path | None,
    *,
    api_key: str | None = None,
    budget_usd: float | None = None,
    budget_tokens: int | None = None,
    parse_attempts: int = 2,
    strategy: Strategy | None = None,
    limits_path: str | Path | None = None,
    modes_path: str | Path | None = None,
) -> LLMClient:
    """A client over ``profile``'s models. ``cache_path`` is the response cache (None: no cache),
    ``limits_path`` the SQLite file whose RPM/TPM buckets every process shares (None: per process);
    either may be a ``redis://`` URL instead, shared by workers on several machines
    and ``modes_path`` where the structured-output mode that works per endpoint is remembered."""
    backends = {name: backend_for(name, cfg, api_key) for name, cfg in profile.models.items()}
    cache = open_response_cache(cache_path) if cache_path is not None else None
    return LLMClient(
        profile,
        backends,
        cache,
        parse_attempts=parse_attempts,
        budget_usd=budget_usd,
        budget_tokens=budget_tokens,
        strategy=strategy,
        limits_path=limits_path if limits_path is None or is_redis_url(limits_path) else Path(limits_path),
        modes=ModeMemory(Path(modes_path) if modes_path is not None else None),
    )


@atexit.register
def _close_sessions() -> None:
    """Write pending cache entries and close pooled HTTP sessions before the interpreter exits."""
    from synth_pipelines.llm.client import _BATCHERS, _LOOP, run_sync

    closers = [b.aclose for b in _BACKENDS.values() if hasattr(b, "aclose")]
    if _LOOP is None or not _LOOP.is_running():
        return

    async def close_all() -> None:
        for batcher in list(_BATCHERS.values()):
            await batcher.flush()
        for close in closers:
            await close()

    with contextlib.suppress(Exception):  # best effort at exit
        run_sync(close_all())
