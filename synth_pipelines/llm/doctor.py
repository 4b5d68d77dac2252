"""Capability check of a model: reachable, key accepted, which structured-output mode works, how fast.

``synth doctor --profile P`` runs it for every model of a profile; the client runs it before the
first fan-out against an endpoint model this state folder has never checked
(:meth:`LLMClient.aprepare`), so a wrong URL, key or server fails in seconds with one report
instead of thousands of failed rows.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from synth_pipelines.llm.backends import Backend, ProviderConfigError
from synth_pipelines.llm.config import ModelConfig
from synth_pipelines.llm.replies import call_backend, parse_reply
from synth_pipelines.llm.structured import ModeMemory, StructuredMode, endpoint_key, mode_chain
from synth_pipelines.llm.types import ChatMessage, CompletionRequest, ProviderError, RawCompletion


class ProbeReply(BaseModel):
    """The tiny reply every probe asks for (bounded, so a small model stops quickly)."""

    model_config = ConfigDict(extra="ignore")

    answer: str = Field(max_length=16)


PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 16}},
    "required": ["answer"],
    "additionalProperties": False,
}
PROBE_MESSAGES = (
    ChatMessage(role="system", content="You answer with a JSON object."),
    ChatMessage(role="user", content='Reply with {"answer": "ok"}.'),
)
# Transient failures (429, 5xx, timeouts) are retried this many times before the check gives up.
PROBE_ATTEMPTS = 3


class ModelCheck(BaseModel):
    """What the check found for one model; ``problem`` and ``fix`` are set when it is not usable."""

    model: str
    endpoint: str
    reachable: bool = False
    auth: str = "n/a"  # ok | rejected | no key sent | n/a (not an endpoint)
    structured_output: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tried: list[str] = Field(default_factory=list)
    # What kind of problem: "unreachable" (connection, timeout: may be an outage), "auth",
    # "no_mode" (the server accepted no structured-output mode) or "error" (any other answer).
    failure: Literal["unreachable", "auth", "no_mode", "error"] | None = None
    problem: str | None = None
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and self.structured_output is not None

    def explain(self) -> str:
        """One paragraph for an error message: what failed, what was tried, what to change."""
        tried = f" Tried: {'; '.join(self.tried)}." if self.tried else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"model {self.model!r} at {self.endpoint}: {self.problem}.{tried}{fix}"


def _endpoint(config: ModelConfig) -> str:
    return config.base_url or f"llama.cpp ({config.source})"


async def _once(
    backend: Backend, config: ModelConfig, request: CompletionRequest, mode: StructuredMode | None
) -> RawCompletion:
    async with asyncio.timeout(config.timeout_s):
        return await call_backend(backend, request, ProbeReply, mode)


async def _try_mode(
    backend: Backend, config: ModelConfig, mode: StructuredMode | None
) -> tuple[RawCompletion, float]:
    request = CompletionRequest(
        model=backend.name, messages=PROBE_MESSAGES, json_schema=PROBE_SCHEMA, temperature=0.0, max_tokens=48
    )
    for attempt in range(PROBE_ATTEMPTS):
        started = time.perf_counter()
        try:
            raw = await _once(backend, config, request, mode)
            return raw, time.perf_counter() - started
        except TimeoutError:
            error = ProviderError(backend.name, f"timed out after {config.timeout_s:g}s", kind="timeout")
            if attempt + 1 == PROBE_ATTEMPTS:
                raise error from None
        except ProviderError as e:
            if not e.retryable or attempt + 1 == PROBE_ATTEMPTS:
                raise
            await asyncio.sleep(min(5.0, e.retry_after or 0.5 * 2**attempt))
    raise AssertionError("unreachable")


def _fix_for(error: ProviderError, config: ModelConfig) -> str:
    if error.kind == "connection":
        return f"check base_url ({config.base_url}): is the server running and reachable from here?"
    if error.kind == "timeout":
        return f"no answer within timeout_s={config.timeout_s:g}; raise it or check the server"
    if error.status == 404:
        return f"check model_id ({config.model_id!r}) and base_url (does it end in /v1?)"
    if error.kind == "rate_limit":
        return "the account is rate limited right now; lower rpm/tpm in the profile or wait"
    return "read the server's message above; fix the profile entry or the server"


async def check_model(
    name: str, config: ModelConfig, backend: Backend, memory: ModeMemory | None = None
) -> ModelCheck:
    """Call ``name`` once per structured-output mode (strongest first) until one gives a reply that
    parses; remember that mode in ``memory``. A mode the server accepts whose reply does not parse
    is kept only if no later mode does better (the client validates and retries every reply)."""
    report = ModelCheck(model=name, endpoint=_endpoint(config))
    takes_modes = getattr(backend, "takes_structured_modes", False)
    modes: tuple[StructuredMode | None, ...] = (None,)
    if takes_modes:
        modes = mode_chain(config.structured_output)
    accepted: tuple[str, RawCompletion, float] | None = None
    for mode in modes:
        label = mode or getattr(backend, "structured_output", None) or "schema"
        try:
            raw, seconds = await _try_mode(backend, config, mode)
        except ProviderConfigError as e:
            report.reachable, report.auth, report.failure = True, "rejected", "auth"
            report.problem = str(e)
            report.fix = f"set the environment variable {config.api_key_env} to a valid key"
            return report
        except ProviderError as e:
            if e.kind == "unsupported":
                report.reachable = True
                report.tried.append(f"{label}: rejected ({e.detail})")
                continue
            report.reachable = e.kind not in ("connection", "timeout")
            report.failure = "error" if report.reachable else "unreachable"
            report.tried.append(f"{label}: {e.detail}")
            report.problem = f"{'unreachable' if not report.reachable else 'failed'}: {e.detail}"
            report.fix = _fix_for(e, config)
            return report
        report.reachable = True
        report.auth = "ok" if getattr(backend, "has_api_key", False) else "no key sent"
        value, reason = parse_reply(raw.text, ProbeReply)
        report.tried.append(f"{label}: {'ok' if value is not None else f'accepted, reply {reason}'}")
        if value is not None:
            accepted = (label, raw, seconds)
            break
        accepted = accepted or (label, raw, seconds)
    if accepted is None:
        report.failure = "no_mode"
        report.problem = "the server accepted no structured-output mode"
        report.fix = (
            "use a server that supports response_format, tools, or plain chat; or set structured_output "
            "to the mode it supports"
        )
        return report
    label, raw, seconds = accepted
    report.structured_output = label
    report.latency_ms = round(seconds * 1000, 1)
    report.prompt_tokens, report.completion_tokens = raw.prompt_tokens, raw.completion_tokens
    if takes_modes and memory is not None:
        memory.set(endpoint_key(config), label, note="probed: " + "; ".join(report.tried))  # type: ignore[arg-type]
    return report


async def check_models(
    models: dict[str, ModelConfig], backends: dict[str, Backend], memory: ModeMemory | None
) -> list[ModelCheck]:
    """Check every model, one after the other (a doctor run should not trip rate limits)."""
    return [await check_model(name, models[name], backends[name], memory) for name in models]


def render(reports: list[ModelCheck]) -> str:
    """The doctor's table, then one line per problem with what to change."""
    header = ["model", "endpoint", "reachable", "auth", "structured_output", "latency_ms", "tokens"]
    rows = [
        [
            r.model,
            r.endpoint,
            "yes" if r.reachable else "NO",
            r.auth,
            r.structured_output or "-",
            f"{r.latency_ms:.0f}" if r.latency_ms is not None else "-",
            f"{r.prompt_tokens}+{r.completion_tokens}" if r.prompt_tokens is not None else "-",
        ]
        for r in reports
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    for r in reports:
        if r.tried and (not r.ok or len(r.tried) > 1):
            lines.append(f"{r.model}: tried {'; '.join(r.tried)}")
        if not r.ok:
            lines.append(f"{r.model}: {r.problem}. {r.fix or ''}".rstrip())
    return "\n".join(lines)
