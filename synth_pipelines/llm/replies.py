"""Model replies: one bare backend call, and the reply text parsed (and repaired) into a pydantic
model. Shared by the client (every call) and the doctor (one probe per structured-output mode)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from synth_pipelines.llm.backends import Backend
from synth_pipelines.llm.structured import StructuredMode
from synth_pipelines.llm.types import CompletionRequest, RawCompletion

T = TypeVar("T", bound=BaseModel)


def extract_json(text: str) -> Any:
    """Parse a reply as JSON, repairing the common damage: code fences and chatter around the object."""
    try:
        return orjson.loads(text)  # the common case, a clean object, at a fraction of json's cost
    except orjson.JSONDecodeError:
        pass
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
        if start == -1 or end <= start:
            raise
        # The first complete JSON object (prompt mode: "Here it is: {...} Hope that helps {x}").
        try:
            value, _ = _LENIENT.raw_decode(cleaned, start)
            return value
        except json.JSONDecodeError:
            return json.loads(cleaned[start : end + 1], strict=False)


_LENIENT = json.JSONDecoder(strict=False)


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


async def call_backend(
    backend: Backend,
    request: CompletionRequest,
    response_model: type[BaseModel] | None,
    mode: StructuredMode | None = None,
) -> RawCompletion:
    """One bare call of a backend (no cache, retry or limits): asynchronous backends are awaited
    with the structured-output ``mode``; synchronous ones (embedded llama.cpp, scripted) run in a
    worker thread, and a cancellable one is stopped if the caller gives up (a timeout)."""
    acomplete = getattr(backend, "acomplete", None)
    if acomplete is not None:
        if mode is not None:
            return await acomplete(request, response_model=response_model, mode=mode)
        return await acomplete(request, response_model=response_model)
    # In-process and scripted backends are synchronous: keep the loop free while they work.
    if not getattr(backend, "supports_cancel", False):
        return await asyncio.to_thread(backend.complete, request)
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(backend.complete, request, cancel)  # type: ignore[call-arg]
    except BaseException:
        cancel.set()  # a timeout (or any abandonment) stops the generation at its next token
        raise
