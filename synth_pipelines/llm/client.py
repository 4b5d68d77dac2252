"""The one interface for every model call: messages + response model -> parsed object + usage.

Caching, timeouts, retries with backoff (tenacity), adaptive per-model concurrency, Retry-After
pauses, a circuit breaker, RPM/TPM limits shared across processes, the fallback chain,
parse-and-repair of malformed replies, the run budget and cost accounting all live here, so
generation, validation and DSPy share one path.

The core is async and runs on one event loop per process (a daemon thread), so HTTP backends keep
one aiohttp connection pool however many callers there are. Fan-out is :meth:`LLMClient.apool`:
a fixed set of worker tasks on that loop, never a thread per call. ``structured``/``complete`` are
the blocking wrappers for DSPy and other synchronous callers.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from synth_pipelines.llm.backends import Backend, ProviderConfigError
from synth_pipelines.llm.cache import CacheBatcher, ResponseStore, request_key, schema_text
from synth_pipelines.llm.config import ModelConfig, ProviderProfile
from synth_pipelines.llm.doctor import ModelCheck, check_model
from synth_pipelines.llm.limits import CircuitOpen, ModelGate
from synth_pipelines.llm.replies import call_backend, parse_reply
from synth_pipelines.llm.router import Strategy, order_models
from synth_pipelines.llm.structured import (
    MODE_ORDER,
    ModeMemory,
    StructuredMode,
    endpoint_key,
    mode_chain,
    next_mode,
)
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
I = TypeVar("I")  # noqa: E741 - an item of a pool

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_PID: int | None = None
_LOOP_LOCK = threading.Lock()
# One batcher per cache file and process: replies waiting to be written are visible to every client.
_BATCHERS: dict[str, CacheBatcher] = {}


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
            _BATCHERS.clear()
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


_ascii = json.encoder.encode_basestring_ascii  # json.dumps of a str, without building an encoder


def prompt_hash(messages: Sequence[ChatMessage], json_schema: dict[str, Any] | None = None) -> str:
    """Hash of ``json.dumps([[role, content], ..., schema], sort_keys=True)``: the prompt's identity
    (assembled from parts so that the shared schema is serialized once)."""
    parts = [f"[{_ascii(m.role)}, {_ascii(m.content)}]" for m in messages]
    parts.append(schema_text(json_schema, ascii=True))
    return hashlib.sha256(f"[{', '.join(parts)}]".encode()).hexdigest()[:16]


@dataclass(slots=True)
class _Call:
    """One completion in flight: what every attempt at it needs."""

    gate: ModelGate
    backend: Backend
    request: CompletionRequest
    response_model: type[BaseModel] | None
    rec: CallRecord
    config: ModelConfig
    estimated_tokens: int
    mode: StructuredMode | None


def _retryable(error: BaseException) -> bool:
    return isinstance(error, ProviderError) and error.retryable


def _retries_left(config: ModelConfig, failures: Sequence[BaseException]) -> bool:
    """Whether another attempt is allowed after ``failures``: 429s count against
    ``rate_limit_retries``, every other retryable error against ``max_retries``."""
    throttled = sum(1 for e in failures if getattr(e, "kind", None) == "rate_limit")
    return throttled <= config.rate_limit_retries and len(failures) - throttled <= config.max_retries


def _outcome_error(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


class LLMClient:
    """Thread-safe façade over the configured backends. One client serves one asset execution; its
    per-model gates (adaptive concurrency, breaker) start fresh, while the cache and the RPM/TPM
    buckets are shared with every other client and process of the warehouse."""

    def __init__(
        self,
        profile: ProviderProfile,
        backends: dict[str, Backend],
        cache: ResponseStore | None = None,
        *,
        parse_attempts: int = 2,
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        strategy: Strategy | None = None,
        limits_path: Path | str | None = None,
        modes: ModeMemory | None = None,
    ):
        self.profile = profile
        self.strategy: Strategy = strategy or profile.roles.strategy
        self.backends = backends
        self.cache = cache
        self.parse_attempts = max(1, parse_attempts)
        self.budget_usd = budget_usd
        self.budget_tokens = budget_tokens
        self.max_backoff_s = max_backoff_s
        self.limits_path = limits_path
        # The structured-output mode that works per endpoint (state folder; see llm/structured.py).
        self.modes = modes or ModeMemory(None)
        self._probe_locks: dict[str, asyncio.Lock] = {}
        self._probe_failures: dict[str, str] = {}
        self._sleep = sleep or asyncio.sleep
        self._lock = threading.Lock()
        self._gates: dict[str, ModelGate] = {}
        self.totals = UsageTotals()
        # What the budget counts: replies the models were paid for, never cache hits.
        self.billed_tokens = 0
        self.billed_usd = 0.0

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
            spent_usd, spent_tokens = self.billed_usd, self.billed_tokens
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
        """How many items a pool should keep in flight to saturate ``models``: the sum of their
        ceilings (each model's gate then admits only what its adaptive limit allows)."""
        return max(1, sum(self._ceiling(self.profile.models[m]) for m in dict.fromkeys(models)))

    @staticmethod
    def _ceiling(config: ModelConfig) -> int:
        # In-process llama.cpp decodes one request at a time: more callers would only queue.
        return 1 if config.kind == "llama_cpp" else config.max_concurrency

    def gate_stats(self) -> dict[str, dict[str, float | int | bool]]:
        """Per model: the adaptive concurrency reached, congestion cuts, rate-limit waits, breaker."""
        return {m: g.stats() for m, g in sorted(self._gates.items())}

    # ------------------------------------------------------------------ raw calls
    def _backend(self, model: str) -> Backend:
        if model not in self.backends:
            raise KeyError(f"model {model!r} is not configured; known: {sorted(self.backends)}")
        return self.backends[model]

    def _gate(self, model: str, config: ModelConfig) -> ModelGate:
        gate = self._gates.get(model)
        if gate is None:
            endpoint = config.base_url or f"llama.cpp ({config.source})"
            gate = ModelGate(
                model,
                endpoint,
                ceiling=self._ceiling(config),
                adaptive=config.adaptive_concurrency and config.kind != "llama_cpp",
                rpm=config.rpm,
                tpm=config.tpm,
                buckets_path=self.limits_path,
                # The quota belongs to the account at the endpoint, whatever the profile calls the model.
                bucket_key=f"{config.base_url or config.source}|{config.model_id or model}",
            )
            self._gates[model] = gate
        return gate

    def _batcher(self) -> CacheBatcher | None:
        if self.cache is None:
            return None
        key = self.cache.location
        batcher = _BATCHERS.get(key)
        if batcher is None:
            batcher = _BATCHERS[key] = CacheBatcher(self.cache)
        return batcher

    # ------------------------------------------------------------------ structured-output modes
    def structured_mode(self, model: str) -> StructuredMode | None:
        """How the schema is sent to ``model``: None for backends that do not take modes (embedded
        llama.cpp constrains with a grammar), the configured mode, or under ``auto`` the one that
        worked before (the strongest, json_schema, until a server has rejected it)."""
        backend = self._backend(model)
        if not getattr(backend, "takes_structured_modes", False):
            return None
        config = self.profile.models[model]
        if config.structured_output != "auto":
            return config.structured_output
        return self.modes.get(endpoint_key(config)) or MODE_ORDER[0]

    def _mode_label(self, backend: Backend, mode: StructuredMode | None) -> str | None:
        return mode or getattr(backend, "structured_output", None)

    def _fall_back(self, model: str, rejected: StructuredMode, error: ProviderError) -> StructuredMode:
        """The mode after ``rejected`` (remembered for every later call), or a non-retryable error
        that says what to change when none is left."""
        config = self.profile.models[model]
        key = endpoint_key(config)
        candidate = next_mode(config.structured_output, rejected)
        if candidate is None:
            tried = "/".join(mode_chain(config.structured_output))
            raise ProviderError(
                model,
                f"{error.detail}; the server accepted no structured-output mode ({tried} tried). "
                "Set structured_output in the provider profile to one it supports (auto tries "
                "json_schema, json_object, tools, prompt), or use another server.",
                kind="http",
                status=error.status,
            )
        # Concurrent calls may each see a rejection; never step back to a mode already given up on.
        known = self.modes.get(key)
        if known is not None and MODE_ORDER.index(known) > MODE_ORDER.index(candidate):
            return known
        self.modes.set(key, candidate, note=f"{rejected} rejected: {error.detail}")
        return candidate

    async def _probe(self, model: str) -> None:
        """Check ``model`` once before its first call from this state folder: one tiny request per
        structured-output mode until one works (remembered). Concurrent first calls wait for the
        one check; if it fails they all raise its report (unreachable, key rejected, no mode), so
        a wrong URL or server fails the fan-out in seconds instead of row by row."""
        lock = self._probe_locks.setdefault(model, asyncio.Lock())
        async with lock:
            if model in self._probe_failures:
                raise ProviderConfigError(self._probe_failures[model])
            config = self.profile.models[model]
            if self.modes.get(endpoint_key(config)) is not None:
                return
            report = await check_model(model, config, self._backend(model), self.modes)
            self._record_probe(model, config, report)
            if report.ok:
                return
            if report.failure == "unreachable":
                # Maybe an outage rather than a wrong URL: the breaker treats it as one (the chain
                # moves on; a half-open call later checks again), and its message says a rerun resumes.
                gate = self._gate(model, config)
                gate.breaker.trip(report.explain())
                gate.breaker.check()
            self._probe_failures[model] = report.explain()
            raise ProviderConfigError(self._probe_failures[model])

    def _record_probe(self, model: str, config: ModelConfig, report: ModelCheck) -> None:
        """The check's requests (one per mode tried) are real calls the endpoint bills: they count in
        the totals, so a run's model calls match what the server saw."""
        rec = CallRecord(model=model)
        rec.model_calls = rec.attempts = len(report.tried)
        rec.prompt_tokens = int(report.prompt_tokens or 0)
        rec.completion_tokens = int(report.completion_tokens or 0)
        rec.cost_usd = config.cost(rec.prompt_tokens, rec.completion_tokens)
        rec.latency_s = float(report.latency_ms or 0) / 1000
        with self._lock:
            self.billed_tokens += rec.prompt_tokens + rec.completion_tokens
            self.billed_usd += rec.cost_usd
        self._record(rec, failed=not report.ok)
        with self._lock:
            self.totals.probe_calls += rec.model_calls

    def mode_stats(self) -> dict[str, str]:
        """Per model, the structured-output mode its calls use now (for run metadata)."""
        return {
            model: label
            for model in sorted(self.profile.models)
            if model in self.backends
            and (label := self._mode_label(self.backends[model], self.structured_mode(model))) is not None
        }

    # ------------------------------------------------------------------ completions
    async def acomplete(
        self, request: CompletionRequest, *, attempt: int = 0, response_model: type[BaseModel] | None = None
    ) -> tuple[RawCompletion, CallRecord]:
        """One completion with cache, limits, timeout and transient-error retries.

        A cache hit is served before anything else (it is free, whatever the budget). A server
        that rejects the structured-output mode gets the next one (``auto``); an endpoint model never
        checked from this state folder is checked first (:meth:`_probe`). Raises
        :class:`ProviderError` once retries are exhausted or the error is not retryable, and
        :class:`~synth_pipelines.llm.limits.CircuitOpen` while the model's endpoint is down.
        """
        backend = self._backend(request.model)
        config = self.profile.models[request.model]
        rec = CallRecord(model=request.model)
        batcher = self._batcher()
        mode = self.structured_mode(request.model) if request.json_schema is not None else None
        probed = False
        while True:
            rec.structured_output = self._mode_label(backend, mode)
            key = self._key(request, backend, mode, attempt)
            if batcher is not None:
                hit = await batcher.get(key)
                if hit is not None:
                    rec.cache_hits = 1
                    rec.attempts = max(1, rec.attempts)
                    rec.prompt_tokens, rec.completion_tokens = hit.prompt_tokens, hit.completion_tokens
                    return hit, rec
            if mode is not None and not probed and self.modes.get(endpoint_key(config)) is None:
                await self._probe(request.model)
                probed = True
                if (found := self.structured_mode(request.model)) != mode:
                    mode = found
                    continue  # the reply may be cached under the mode that works
            self._check_budget()
            call = _Call(
                gate=self._gate(request.model, config),
                backend=backend,
                request=request,
                response_model=response_model,
                rec=rec,
                config=config,
                estimated_tokens=sum(len(m.content) for m in request.messages) // 4 + request.max_tokens,
                mode=mode,
            )
            try:
                # The first attempt runs bare: most calls succeed, and tenacity's per-call setup
                # costs more client CPU than the rest of the call (see make bench-llm).
                raw = await self._attempt(call)
            except ProviderError as first:
                if first.kind == "unsupported" and mode is not None:
                    mode = self._fall_back(request.model, mode, first)
                    continue
                if not first.retryable or not _retries_left(config, [first]):
                    raise
                raw = await self._retry(first, call)
            break
        rec.model_calls += 1
        rec.prompt_tokens, rec.completion_tokens = raw.prompt_tokens, raw.completion_tokens
        rec.cost_usd = config.cost(raw.prompt_tokens, raw.completion_tokens)
        with self._lock:
            self.billed_tokens += raw.prompt_tokens + raw.completion_tokens
            self.billed_usd += rec.cost_usd
        if batcher is not None:
            batcher.put(key, request.model, raw)
        return raw, rec

    async def _retry(self, first: ProviderError, call: _Call) -> RawCompletion:
        """Further attempts with tenacity: backoff with jitter, or Retry-After when given, until the
        budget of the failures' kind is spent (``max_retries``, or ``rate_limit_retries`` for 429s)."""
        await self._sleep(self._backoff(1, first))
        failures: list[BaseException] = [first]

        def spent(state: RetryCallState) -> bool:
            error = _outcome_error(state)
            if error is not None:
                failures.append(error)
            return not _retries_left(call.config, failures)

        retrying = AsyncRetrying(
            stop=spent,
            retry=retry_if_exception(_retryable),
            wait=lambda state: self._backoff(state.attempt_number + 1, _outcome_error(state)),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt_state in retrying:
            with attempt_state:
                return await self._attempt(call)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _attempt(self, call: _Call) -> RawCompletion:
        gate, backend, request, rec, config = call.gate, call.backend, call.request, call.rec, call.config
        gate.breaker.check()
        # The common path awaits nothing it does not need (no pause, no rate limit configured):
        # each skipped coroutine and context manager is client CPU at thousands of calls a second.
        if gate.paused:
            await gate.wait_unpaused()
        await gate.concurrency.acquire()
        try:
            if gate.buckets.active:
                await gate.buckets.admit(call.estimated_tokens)
            gate.breaker.check()  # it may have opened while this call waited for a slot
            rec.attempts += 1
            started = time.perf_counter()
            error: ProviderError | None
            try:
                if getattr(backend, "enforces_timeout", False):
                    raw = await call_backend(backend, request, call.response_model, call.mode)
                else:
                    # One timer per call: asyncio.timeout (which, unlike wait_for, makes no extra task).
                    async with asyncio.timeout(config.timeout_s):
                        raw = await call_backend(backend, request, call.response_model, call.mode)
            except TimeoutError:
                error = ProviderError(
                    request.model, f"timed out after {config.timeout_s:g}s", retryable=True, kind="timeout"
                )
            except ProviderError as e:
                error = e
            else:
                error = None
            finally:
                rec.latency_s += time.perf_counter() - started
        finally:
            gate.concurrency.release()
        if error is None:
            gate.concurrency.on_success()
            gate.breaker.record_success()
            return raw
        if error.kind in ("rate_limit", "timeout"):
            gate.concurrency.on_congestion()
        if error.kind == "rate_limit":
            if error.retry_after:
                gate.pause(min(self.max_backoff_s, error.retry_after))
        elif error.kind != "unsupported":  # the server is fine; the mode is not (the caller falls back)
            gate.breaker.record_failure(error, connection=error.kind == "connection")
        raise error

    @staticmethod
    def _key(request: CompletionRequest, backend: Backend, mode: StructuredMode | None, attempt: int) -> str:
        # A reply obtained through another mode is another reply: the mode is part of the key
        # (json_schema, the default, keeps the keys written before modes existed).
        fingerprint = backend.fingerprint()
        if mode is not None and mode != MODE_ORDER[0]:
            fingerprint = f"{fingerprint}|{mode}"
        return request_key(request, attempt=attempt, model_fingerprint=fingerprint)

    def cache_key(self, request: CompletionRequest, *, attempt: int = 0) -> str:
        """The key :meth:`acomplete` would look the request up under (the same function), so a
        planner can tell which calls the cache already answers without making any."""
        mode = self.structured_mode(request.model) if request.json_schema is not None else None
        return self._key(request, self._backend(request.model), mode, attempt)

    def needs_check(self, model: str) -> bool:
        """True when ``model``'s endpoint has not been checked from this state folder yet (its first
        call makes one check request per structured-output mode tried)."""
        backend = self._backend(model)
        if not getattr(backend, "takes_structured_modes", False):
            return False
        return self.modes.get(endpoint_key(self.profile.models[model])) is None

    def cached_replies(self, requests: Sequence[CompletionRequest]) -> list[RawCompletion | None]:
        """The cached reply of each request (first attempt), or None: what a run would get for free."""
        if self.cache is None or not requests:
            return [None] * len(requests)
        keys = [self.cache_key(r) for r in requests]
        found = self.cache.get_many(keys)
        return [found.get(k) for k in keys]

    def complete(self, request: CompletionRequest, *, attempt: int = 0) -> tuple[RawCompletion, CallRecord]:
        """Blocking :meth:`acomplete`."""
        return run_sync(self.acomplete(request, attempt=attempt))

    def _backoff(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait before retrying after ``attempt`` (1-based) failed with ``error``."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(self.max_backoff_s, max(0.0, retry_after))
        # Exponential backoff with full jitter: spreads retries of many concurrent callers.
        return min(self.max_backoff_s, 0.5 * (2 ** (attempt - 1))) * random.uniform(0.5, 1.0)

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
        model is tried; if all fail, the result carries the reason instead of raising. Only when
        every model of the chain is down (circuit open) does this raise
        :class:`~synth_pipelines.llm.limits.CircuitOpen`: there is nobody left to ask.
        """
        msgs = tuple(messages)
        total = CallRecord(model=models[0])
        errors: list[str] = []
        down: list[CircuitOpen] = []
        provider_failed = False
        last_text = ""
        for model in models:
            for attempt in range(self.parse_attempts):
                # Built from values this method already holds: no need to validate them again.
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
                except CircuitOpen as e:
                    down.append(e)
                    break
                except ProviderError as e:
                    errors.append(str(e))
                    provider_failed = True
                    break  # this model is down after its retries: next in the chain
                _merge(total, rec)
                total.model = model
                value, reason = parse_reply(raw.text, response_model)
                last_text = raw.text
                if value is not None:
                    self._record(total, failed=False)
                    return StructuredResult(
                        value=value,
                        error=None,
                        failure_kind=None,
                        raw_text=raw.text,
                        record=total,
                        prompt_hash=prompt_hash(msgs, json_schema),
                    )
                errors.append(f"{model} attempt {attempt + 1}: {reason}")
        if len(down) == len(models):
            raise down[-1]
        self._record(total, failed=True)
        return StructuredResult(
            error="; ".join([*errors, *(str(e) for e in down)]) or "no model available",
            failure_kind="provider" if provider_failed or down else "reply",
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

    async def astructured_request(
        self, models: Sequence[str], request: CompletionRequest, response_model: type[T]
    ) -> StructuredResult[T]:
        """:meth:`astructured` for a prepared request (its messages, schema, temperature, token
        limit and seed), the form the planner looks up in the cache."""
        return await self.astructured(
            models,
            request.messages,
            response_model,
            json_schema=request.json_schema or {},
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            seed=request.seed,
        )

    def structured_request(
        self, models: Sequence[str], request: CompletionRequest, response_model: type[T]
    ) -> StructuredResult[T]:
        """Blocking :meth:`astructured_request`."""
        return run_sync(self.astructured_request(models, request, response_model))

    # ------------------------------------------------------------------ fan-out
    async def apool(
        self,
        fn: Callable[[I], Awaitable[R]],
        items: Iterable[I],
        *,
        width: int,
        on_result: Callable[[I, R], None] | None = None,
        collect: bool = True,
    ) -> list[R]:
        """Run ``fn`` over ``items`` with ``width`` worker tasks on the provider loop.

        Items are pulled lazily (a generator of 100,000 items is never materialized), results come
        back in input order when ``collect``, and ``on_result`` sees each as it finishes (in the
        loop thread). The first exception cancels the other workers and is raised.
        """
        numbered = enumerate(items)
        results: dict[int, R] = {}

        async def worker() -> None:
            for index, item in numbered:
                result = await fn(item)
                if on_result is not None:
                    on_result(item, result)
                if collect:
                    results[index] = result

        tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, width))]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [results[i] for i in range(len(results))]

    def pool(
        self,
        fn: Callable[[I], Awaitable[R]],
        items: Iterable[I],
        *,
        width: int,
        on_result: Callable[[I, R], None] | None = None,
        collect: bool = True,
    ) -> list[R]:
        """Blocking :meth:`apool`."""
        return run_sync(self.apool(fn, items, width=width, on_result=on_result, collect=collect))

    async def aflush(self) -> None:
        batcher = self._batcher()
        if batcher is not None:
            await batcher.flush()

    def flush(self) -> None:
        """Make every cached reply durable (assets call this before they finish)."""
        run_sync(self.aflush())


def _merge(total: CallRecord, rec: CallRecord) -> None:
    total.prompt_tokens += rec.prompt_tokens
    total.completion_tokens += rec.completion_tokens
    total.cost_usd += rec.cost_usd
    total.latency_s += rec.latency_s
    total.attempts += rec.attempts
    total.cache_hits += rec.cache_hits
    total.model_calls += rec.model_calls
    total.structured_output = rec.structured_output
