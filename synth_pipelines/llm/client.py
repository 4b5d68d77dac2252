"""The one interface for every model call: messages + response model -> parsed object + usage.

Caching, timeouts, retries with backoff, per-model concurrency and RPM/TPM limits, the fallback
chain, parse-and-repair of malformed replies, the run budget and cost accounting all live here, so
generation, validation and DSPy share one path.

The core is async and runs on one event loop per process (a daemon thread), so HTTP backends keep
one aiohttp connection pool however many threads call in. ``structured``/``complete`` are the
blocking wrappers that assets and DSPy use; ``astructured``/``acomplete`` are for async callers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from synth_pipelines.llm.backends import Backend
from synth_pipelines.llm.cache import ResponseCache, request_key
from synth_pipelines.llm.config import ModelConfig, ProviderProfile
from synth_pipelines.llm.limits import ModelLimiter
from synth_pipelines.llm.router import Strategy, order_models
from synth_pipelines.llm.types import (
    CallRecord,
    ChatMessage,
    CompletionRequest,
    ProviderError,
    RawCompletion,
    StructuredResult,
    UsageTotals,
)

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_PID: int | None = None
_LOOP_LOCK = threading.Lock()
_LIMITERS: dict[tuple[str, str], ModelLimiter] = {}


def client_loop() -> asyncio.AbstractEventLoop:
    """The process's provider event loop (recreated after a fork)."""
    global _LOOP, _LOOP_PID
    with _LOOP_LOCK:
        if _LOOP is None or os.getpid() != _LOOP_PID or not _LOOP.is_running():
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                loop.run_forever()

            threading.Thread(target=run, name="synth-llm-loop", daemon=True).start()
            started.wait()
            _LOOP, _LOOP_PID = loop, os.getpid()
            _LIMITERS.clear()
        return _LOOP


def run_sync(coro: Coroutine[Any, Any, R]) -> R:
    """Run a coroutine on the provider loop from synchronous code and wait for its result."""
    loop = client_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("run_sync called from the provider loop itself; await the async method instead")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


class BudgetExhausted(RuntimeError):
    """The run's token or dollar budget is spent. Callers stop cleanly and keep what they have."""


def prompt_hash(messages: Sequence[ChatMessage], json_schema: dict[str, Any] | None = None) -> str:
    payload = json.dumps([[m.role, m.content] for m in messages] + [json_schema], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def extract_json(text: str) -> Any:
    """Parse a reply as JSON, repairing the common damage: code fences and chatter around the object."""
    cleaned = text.strip()
    if cleaned.startswith("```"):
        cleaned = cleaned.strip("`")
        cleaned = cleaned.split("\n", 1)[1] if "\n" in cleaned else cleaned
    # strict=False accepts raw control characters (newlines, tabs) inside strings, which small
    # models emit even under a grammar; the value is still validated against the schema after.
    try:
        return json.loads(cleaned, strict=False)
    except json.JSONDecodeError:
        start, end = cleaned.find("{"), cleaned.rfind("}")
        if start != -1 and end > start:
            return json.loads(cleaned[start : end + 1], strict=False)
        raise


def parse_reply(text: str, response_model: type[T]) -> tuple[T | None, str | None]:
    """Return (object, None) or (None, reason). Never raises."""
    if not text.strip():
        return None, "empty reply"
    try:
        data = extract_json(text)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg} at char {e.pos})"
    try:
        return response_model.model_validate(data), None
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        return None, f"schema violation at {loc}: {first['msg']} ({e.error_count()} error(s))"


class LLMClient:
    """Thread-safe façade over the configured backends."""

    def __init__(
        self,
        profile: ProviderProfile,
        backends: dict[str, Backend],
        cache: ResponseCache | None = None,
        *,
        parse_attempts: int = 2,
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        strategy: Strategy | None = None,
    ):
        self.profile = profile
        self.strategy: Strategy = strategy or profile.roles.strategy
        self.backends = backends
        self.cache = cache
        self.parse_attempts = max(1, parse_attempts)
        self.budget_usd = budget_usd
        self.budget_tokens = budget_tokens
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep or asyncio.sleep
        self._lock = threading.Lock()
        self.totals = UsageTotals()

    # ------------------------------------------------------------------ accounting
    def reset_totals(self) -> UsageTotals:
        with self._lock:
            old, self.totals = self.totals, UsageTotals()
        return old

    def _record(self, rec: CallRecord, *, failed: bool) -> None:
        with self._lock:
            self.totals.add(rec, failed=failed)

    def _check_budget(self) -> None:
        with self._lock:
            spent_usd = self.totals.cost_usd
            spent_tokens = self.totals.prompt_tokens + self.totals.completion_tokens
        if self.budget_usd is not None and spent_usd >= self.budget_usd:
            raise BudgetExhausted(f"run budget of ${self.budget_usd:.4f} reached (spent ${spent_usd:.4f})")
        if self.budget_tokens is not None and spent_tokens >= self.budget_tokens:
            raise BudgetExhausted(f"run budget of {self.budget_tokens} tokens reached (spent {spent_tokens})")

    def model_config(self, name: str) -> ModelConfig:
        return self.profile.models[name]

    def generator_chain(self) -> list[str]:
        """The generator models in the order the routing strategy picks (first serves, rest fall back)."""
        with self._lock:
            observed = {
                m: s["completion_tokens"] / s["latency_s"]
                for m, s in self.totals.per_model.items()
                if s["latency_s"] > 0 and s["model_calls"] > 0
            }
        return order_models(self.profile.roles.generator, self.profile.models, self.strategy, observed)

    def concurrency_for(self, models: Iterable[str]) -> int:
        """Parallel calls worth making: 1 for in-process models (they serialize), else the smallest limit."""
        limits = [
            1 if self.profile.models[m].kind == "llama_cpp" else self.profile.models[m].max_concurrency
            for m in models
        ]
        return max(1, min(limits) if limits else 1)

    # ------------------------------------------------------------------ raw calls
    def _backend(self, model: str) -> Backend:
        if model not in self.backends:
            raise KeyError(f"model {model!r} is not configured; known: {sorted(self.backends)}")
        return self.backends[model]

    @staticmethod
    def _limiter(model: str, config: ModelConfig) -> ModelLimiter:
        key = (model, config.model_dump_json())
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = ModelLimiter(config.max_concurrency, config.rpm, config.tpm)
            _LIMITERS[key] = limiter
        return limiter

    @staticmethod
    async def _call(
        backend: Backend, request: CompletionRequest, response_model: type[BaseModel] | None
    ) -> RawCompletion:
        acomplete = getattr(backend, "acomplete", None)
        if acomplete is not None:
            return await acomplete(request, response_model=response_model)
        # In-process and scripted backends are synchronous: keep the loop free while they work.
        return await asyncio.to_thread(backend.complete, request)

    async def acomplete(
        self, request: CompletionRequest, *, attempt: int = 0, response_model: type[BaseModel] | None = None
    ) -> tuple[RawCompletion, CallRecord]:
        """One completion with cache, limits, timeout and transient-error retries.

        Raises :class:`ProviderError` once retries are exhausted or the error is not retryable.
        """
        backend = self._backend(request.model)
        config = self.profile.models[request.model]
        key = request_key(request, attempt=attempt, model_fingerprint=backend.fingerprint())
        rec = CallRecord(model=request.model)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                rec.cache_hits = 1
                rec.attempts = 1
                rec.prompt_tokens, rec.completion_tokens = hit.prompt_tokens, hit.completion_tokens
                return hit, rec
        self._check_budget()
        limiter = self._limiter(request.model, config)
        estimated = sum(len(m.content) for m in request.messages) // 4 + request.max_tokens
        last: ProviderError | None = None
        for retry in range(config.max_retries + 1):
            rec.attempts += 1
            async with limiter.semaphore:
                await limiter.admit(estimated)
                started = time.perf_counter()
                try:
                    raw = await asyncio.wait_for(
                        self._call(backend, request, response_model), config.timeout_s
                    )
                except TimeoutError:
                    last = ProviderError(
                        request.model, f"timed out after {config.timeout_s:g}s", retryable=True
                    )
                except ProviderError as e:
                    last = e
                else:
                    last = None
                rec.latency_s += time.perf_counter() - started
            if last is None:
                rec.model_calls += 1
                rec.prompt_tokens, rec.completion_tokens = raw.prompt_tokens, raw.completion_tokens
                rec.cost_usd = config.cost(raw.prompt_tokens, raw.completion_tokens)
                if self.cache is not None:
                    self.cache.put(key, request.model, raw)
                return raw, rec
            if not last.retryable or retry == config.max_retries:
                break
            await self._sleep(self._backoff(retry, last.retry_after))
        assert last is not None
        raise last

    def complete(self, request: CompletionRequest, *, attempt: int = 0) -> tuple[RawCompletion, CallRecord]:
        """Blocking :meth:`acomplete`."""
        return run_sync(self.acomplete(request, attempt=attempt))

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_backoff_s, max(0.0, retry_after))
        # Exponential backoff with full jitter: spreads retries of many concurrent callers.
        return min(self.max_backoff_s, 0.5 * (2**retry)) * random.uniform(0.5, 1.0)

    # ------------------------------------------------------------------ structured calls
    async def astructured(
        self,
        models: Sequence[str],
        messages: Sequence[ChatMessage],
        response_model: type[T],
        *,
        json_schema: dict[str, Any],
        temperature: float = 0.7,
        max_tokens: int = 512,
        seed: int = 0,
    ) -> StructuredResult[T]:
        """Ask the first model of ``models`` for a ``response_model``; fall back down the chain.

        A malformed or schema-violating reply is retried with a new sampling seed, then the next
        model is tried; if all fail, the result carries the reason instead of raising.
        """
        msgs = tuple(messages)
        total = CallRecord(model=models[0])
        errors: list[str] = []
        last_text = ""
        for model in models:
            for attempt in range(self.parse_attempts):
                request = CompletionRequest(
                    model=model,
                    messages=msgs,
                    json_schema=json_schema,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    seed=seed + attempt * 7919,
                )
                try:
                    raw, rec = await self.acomplete(request, attempt=attempt, response_model=response_model)
                except ProviderError as e:
                    errors.append(str(e))
                    break  # this model is down after its retries: next in the chain
                _merge(total, rec)
                total.model = model
                value, reason = parse_reply(raw.text, response_model)
                last_text = raw.text
                if value is not None:
                    self._record(total, failed=False)
                    return StructuredResult(
                        value=value,
                        raw_text=raw.text,
                        record=total,
                        prompt_hash=prompt_hash(msgs, json_schema),
                    )
                errors.append(f"{model} attempt {attempt + 1}: {reason}")
        self._record(total, failed=True)
        return StructuredResult(
            error="; ".join(errors) or "no model available",
            raw_text=last_text[:2000],
            record=total,
            prompt_hash=prompt_hash(msgs, json_schema),
        )

    def structured(
        self,
        models: Sequence[str],
        messages: Sequence[ChatMessage],
        response_model: type[T],
        *,
        json_schema: dict[str, Any],
        temperature: float = 0.7,
        max_tokens: int = 512,
        seed: int = 0,
    ) -> StructuredResult[T]:
        """Blocking :meth:`astructured`."""
        return run_sync(
            self.astructured(
                models,
                messages,
                response_model,
                json_schema=json_schema,
                temperature=temperature,
                max_tokens=max_tokens,
                seed=seed,
            )
        )

    # ------------------------------------------------------------------ fan-out
    def map(self, fn: Callable[[Any], R], items: Sequence[Any], *, concurrency: int) -> list[R]:
        """Apply a blocking ``fn`` to items from ``concurrency`` threads, preserving order."""
        if concurrency <= 1 or len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(fn, items))


def _merge(total: CallRecord, rec: CallRecord) -> None:
    total.prompt_tokens += rec.prompt_tokens
    total.completion_tokens += rec.completion_tokens
    total.cost_usd += rec.cost_usd
    total.latency_s += rec.latency_s
    total.attempts += rec.attempts
    total.cache_hits += rec.cache_hits
    total.model_calls += rec.model_calls
