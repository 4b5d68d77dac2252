"""The model provider resource: every LLM call in an asset goes through the client it builds."""

import os
from pathlib import Path
from typing import cast, get_args

import dagster as dg
from pydantic import Field

from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.config import ProviderProfile, load_profile
from synth_pipelines.llm.factory import build_client
from synth_pipelines.llm.redis_state import check_reachable, is_redis_url, redacted
from synth_pipelines.llm.router import Strategy


class LLMResource(dg.ConfigurableResource):
    """Model providers, roles (generator chain, weighted validators, program model), cache and budget.

    ``profile`` names a bundled profile (``local``: the embedded GGUF models; ``openai``: any
    OpenAI-compatible endpoint) or a path to a profile YAML. ``api_key`` is bound from
    ``dg.EnvVar`` and never logged or stored.
    """

    profile: str = "local"
    api_key: str | None = Field(default=None, description="API key for OpenAI-compatible models (secret).")
    budget_usd: float | None = Field(default=None, description="Stop cleanly once a run has spent this much.")
    budget_tokens: int | None = Field(default=None, description="Stop cleanly after this many tokens.")
    parse_attempts: int = Field(default=2, ge=1, description="Tries per model for a malformed reply.")
    use_cache: bool = Field(default=True, description="Content-addressed response cache under the warehouse.")
    cache_file: str | None = Field(
        default=None,
        description="Use this response cache (SQLite file) instead of the warehouse's: several scratch "
        "warehouses (synth benchmark) then share replies.",
    )
    shared_state: str | None = Field(
        default=None,
        description="redis://host:port/db: the response cache and the RPM/TPM buckets in Redis, shared "
        "by workers on several machines (default: SYNTH_SHARED_STATE, else SQLite files in the state "
        "folder, shared by the processes of one machine).",
    )
    strategy: str | None = Field(
        default=None,
        description="Generator routing: declared, cost, quality, speed or balanced; overrides the profile's.",
    )

    def load_profile(self) -> ProviderProfile:
        return load_profile(self.profile)

    def client(self, cache_path: str | Path) -> LLMClient:
        """A client for one asset execution (fresh usage totals and per-model gates; backends, the
        cache, and the RPM/TPM buckets and structured-output modes beside it in the state folder
        are shared)."""
        cache_path = self.cache_file or cache_path
        shared = self.shared_location()
        if shared is not None:
            check_reachable(shared)  # one clear line now, not a connection error mid-run
        return build_client(
            self.load_profile(),
            (shared or cache_path) if self.use_cache else None,
            limits_path=shared or Path(cache_path).parent / "limits.sqlite",
            modes_path=Path(cache_path).parent / "structured_modes.sqlite",
            api_key=self.api_key,
            budget_usd=self.budget_usd,
            budget_tokens=self.budget_tokens,
            parse_attempts=self.parse_attempts,
            strategy=self._strategy(),
        )

    def shared_location(self) -> str | None:
        """The Redis URL of the shared cache and buckets, or None (the state folder's SQLite)."""
        url = self.shared_state or os.environ.get("SYNTH_SHARED_STATE") or None
        if url is not None and not is_redis_url(url):
            raise ValueError(
                f"llm.shared_state / SYNTH_SHARED_STATE {redacted(url)!r} is not a Redis URL; use "
                "redis://host:6379/0 (or rediss:// for TLS), or unset it for the state folder"
            )
        return url

    def _strategy(self) -> Strategy | None:
        if self.strategy is None:
            return None
        if self.strategy not in get_args(Strategy):
            raise ValueError(
                f"llm.strategy {self.strategy!r} is not a routing strategy; "
                f"use one of {list(get_args(Strategy))}"
            )
        return cast(Strategy, self.strategy)
