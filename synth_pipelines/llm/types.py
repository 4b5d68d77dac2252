"""Value types that cross the provider boundary: messages in, parsed objects and usage out.

Messages are pydantic models (they are validated where callers build them). The types the client
makes and updates once or more per call (request, raw completion, call record, result, totals) are
slotted dataclasses: pydantic's construction and attribute hooks cost more client CPU than the
rest of a call (see ``make bench-llm``), and everything in them was validated on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict

T = TypeVar("T", bound=BaseModel)


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """Everything that determines a model's reply. Its canonical JSON is the cache key."""

    model: str
    messages: tuple[ChatMessage, ...]
    json_schema: dict[str, Any] | None = None
    temperature: float = 0.7
    max_tokens: int = 512
    seed: int = 0


@dataclass(slots=True)
class RawCompletion:
    """What a backend returns: the text and the token counts it reports."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"

    @classmethod
    def from_json(cls, body: str | bytes) -> RawCompletion:
        """A completion as a response cache stores it (``orjson.dumps`` of this dataclass); a
        missing or null count reads as 0, so bodies written by older versions still load."""
        data = orjson.loads(body)
        return cls(
            text=str(data.get("text", "")),
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            finish_reason=str(data.get("finish_reason") or "stop"),
        )


@dataclass(slots=True)
class CallRecord:
    """Accounting for one logical call (possibly several attempts). A slotted dataclass, not a
    pydantic model: it is updated a dozen times per call on the hot path and never crosses a
    boundary on its own."""

    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 0
    cache_hits: int = 0
    model_calls: int = 0
    # How the schema reached the model: json_schema, json_object, tools, prompt (HTTP endpoints),
    # grammar (embedded llama.cpp), or None (no schema, or a backend that does not say).
    structured_output: str | None = None


@dataclass(slots=True)
class StructuredResult(Generic[T]):
    """A parsed object, or the reason there is none. A bad reply never raises out of the client."""

    record: CallRecord
    value: T | None = None
    error: str | None = None
    # Why there is no value: "reply" (the model answered, but nothing usable) or "provider" (no
    # answer: HTTP errors, timeouts, endpoint down). Provider failures are retried on a rerun.
    failure_kind: Literal["reply", "provider"] | None = None
    raw_text: str = ""
    prompt_hash: str = ""

    @property
    def ok(self) -> bool:
        return self.value is not None


@dataclass(slots=True)
class UsageTotals:
    """Per-model totals accumulated by a client; goes into materialization metadata."""

    calls: int = 0
    model_calls: int = 0
    # Of model_calls, the requests of endpoint checks (once per endpoint and state folder).
    probe_calls: int = 0
    # Tokens of the calls a model answered (prompt_tokens and completion_tokens include cache hits).
    billed_tokens: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    per_model: dict[str, dict[str, float]] = field(default_factory=dict)
    # Per model, how the schema reached it on its latest call (json_schema, json_object, ...).
    structured_output: dict[str, str] = field(default_factory=dict)

    def add(self, rec: CallRecord, *, failed: bool) -> None:
        self.calls += 1
        if rec.structured_output is not None:
            self.structured_output[rec.model] = rec.structured_output
        self.model_calls += rec.model_calls
        self.cache_hits += rec.cache_hits
        self.failures += int(failed)
        self.prompt_tokens += rec.prompt_tokens
        self.completion_tokens += rec.completion_tokens
        if rec.model_calls:
            self.billed_tokens += rec.prompt_tokens + rec.completion_tokens
        self.cost_usd += rec.cost_usd
        self.latency_s += rec.latency_s
        m = self.per_model.setdefault(
            rec.model,
            {
                "calls": 0,
                "model_calls": 0,
                "cache_hits": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cost_usd": 0.0,
                "latency_s": 0.0,
            },
        )
        m["calls"] += 1
        m["model_calls"] += rec.model_calls
        m["cache_hits"] += rec.cache_hits
        m["prompt_tokens"] += rec.prompt_tokens
        m["completion_tokens"] += rec.completion_tokens
        m["cost_usd"] += rec.cost_usd
        m["latency_s"] += rec.latency_s


# "unsupported": the server rejected the structured-output mode (the client tries the next one).
ErrorKind = Literal["connection", "timeout", "rate_limit", "http", "unsupported", "circuit_open", "other"]


class ProviderError(RuntimeError):
    """A call that failed for a reason other than a malformed reply (timeout, HTTP error, missing model).

    ``kind`` says what failed (the client's congestion control and circuit breaker act on it),
    ``status`` is the HTTP status when there was one, and ``detail`` the message without the model.
    """

    def __init__(
        self,
        model: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        kind: ErrorKind = "other",
        status: int | None = None,
    ):
        self.model = model
        self.detail = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.kind = kind
        self.status = status
        super().__init__(f"model {model!r}: {message}")
