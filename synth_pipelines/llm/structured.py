"""Structured-output modes: how a JSON schema travels to an OpenAI-compatible server.

Servers differ. OpenAI, vLLM, LM Studio and llama.cpp's C++ server take ``response_format:
json_schema``; llama-cpp-python's server and some APIs only take ``json_object`` (sometimes with a
``schema`` field); some only take tools; some take nothing, and the schema must go in the prompt.
A model's ``structured_output`` setting picks one mode, or ``auto``: the strongest first, then the
next whenever the server rejects a mode as unsupported. The mode that worked is remembered per
endpoint and model in the state folder (:class:`ModeMemory`), so the probe happens once.

Whatever the mode, the client validates every reply against the pydantic model, so a server that
ignores the schema costs a retry, never a bad row.
"""

from __future__ import annotations

import json
import re
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

from synth_pipelines.llm.config import ModelConfig, StructuredOutput
from synth_pipelines.llm.sqlite import SharedDatabase

StructuredMode = Literal["json_schema", "json_object", "tools", "prompt"]
# Strongest first: a schema the server enforces, JSON it enforces, a tool call, instructions only.
MODE_ORDER: tuple[StructuredMode, ...] = get_args(StructuredMode)
TOOL_NAME = "respond"
PROMPT_MARKER = "Reply with one JSON object and nothing else. It must match this JSON Schema:"

# Words a server uses when it rejects the way the schema was sent (not the request as a whole).
_MODE_WORDS: dict[StructuredMode, tuple[str, ...]] = {
    "json_schema": ("response_format", "json_schema", "structured output", "'text' or 'json_object'"),
    "json_object": ("response_format", "json_object", "schema", "grammar"),
    "tools": ("tool", "function"),
    "prompt": (),
}
_UNSUPPORTED_WORDS = (
    "not supported",
    "unsupported",
    "not support",
    "input should be",
    "extra inputs are not permitted",
    "unrecognized",
    "unknown",
    "invalid",
    "not allowed",
    "not implemented",
)


def mode_chain(setting: StructuredOutput) -> tuple[StructuredMode, ...]:
    """The modes to try, in order, for a model's ``structured_output`` setting."""
    if setting == "auto":
        return MODE_ORDER
    return (setting,)


def next_mode(setting: StructuredOutput, rejected: StructuredMode) -> StructuredMode | None:
    """The mode after ``rejected`` in the model's chain (None: nothing left to try)."""
    chain = mode_chain(setting)
    index = chain.index(rejected) if rejected in chain else len(chain)
    return chain[index + 1] if index + 1 < len(chain) else None


def is_mode_rejection(status: int | None, message: str, mode: StructuredMode | None) -> bool:
    """Whether an HTTP error says the server does not support ``mode`` (rather than, say, an overload).

    Servers answer an unsupported ``response_format`` with 400, 422 or even 500 (llama-cpp-python
    wraps its validation error in a 500), so the status alone cannot tell; the body must name the
    mechanism and say it is not accepted.
    """
    if mode is None or mode == "prompt" or status not in (400, 404, 415, 422, 500, 501):
        return False
    text = message.lower()
    return any(w in text for w in _MODE_WORDS[mode]) and any(w in text for w in _UNSUPPORTED_WORDS)


def compact_schema(schema: dict[str, Any]) -> str:
    """The JSON schema without what a model need not read (titles, ``$schema``, empty values),
    minified: the prompt-mode rendering."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: strip(v)
                for k, v in node.items()
                if k not in ("title", "$schema", "additionalProperties") and v not in (None, {}, [])
            }
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps(strip(schema), separators=(",", ":"), ensure_ascii=False)


@lru_cache(maxsize=64)
def _instruction(schema_json: str) -> str:
    return f"{PROMPT_MARKER}\n{compact_schema(json.loads(schema_json))}"


def prompt_instruction(schema: dict[str, Any]) -> str:
    """The system-message instruction of the prompt and json_object modes (rendered once per schema)."""
    return _instruction(json.dumps(schema, sort_keys=True))


def with_schema_in_system(messages: list[dict[str, str]], schema: dict[str, Any]) -> list[dict[str, str]]:
    """Messages with the schema instruction appended to the system message (or a new one first)."""
    instruction = prompt_instruction(schema)
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": f"{messages[0]['content']}\n\n{instruction}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def apply_mode(
    body: dict[str, Any], mode: StructuredMode, schema: dict[str, Any], name: str, *, encoded: Any = None
) -> dict[str, Any]:
    """Put ``schema`` into a ``/chat/completions`` body (or SDK kwargs) the way ``mode`` sends it,
    in place. ``encoded`` stands for the schema in the body when given (an ``orjson.Fragment``, so
    that a schema shared by thousands of calls is serialized once)."""
    payload = schema if encoded is None else encoded
    if mode == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": name, "schema": payload}}
    elif mode == "json_object":
        # ``schema`` is how llama-cpp-python, Together and Fireworks constrain json_object; servers
        # that ignore it still get the schema in the system message (OpenAI also requires the word
        # JSON in the messages for this mode).
        body["response_format"] = {"type": "json_object", "schema": payload}
        body["messages"] = with_schema_in_system(body["messages"], schema)
    elif mode == "tools":
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": TOOL_NAME, "description": f"Return the {name}.", "parameters": payload},
            }
        ]
        body["tool_choice"] = {"type": "function", "function": {"name": TOOL_NAME}}
    else:
        body["messages"] = with_schema_in_system(body["messages"], schema)
    return body


def reply_text(message: dict[str, Any]) -> str:
    """The reply of a chat-completion message: its content, or the first tool call's arguments."""
    text = message.get("content") or ""
    calls = message.get("tool_calls") or []
    if not text and calls:
        text = (calls[0].get("function") or {}).get("arguments") or ""
    return str(text)


_SAFE_KEY = re.compile(r"[^A-Za-z0-9_.:/|@-]")


@lru_cache(maxsize=256)  # on the path of every call; a ModelConfig is frozen, hence hashable
def endpoint_key(config: ModelConfig) -> str:
    """Which server and model a remembered mode belongs to (never a secret)."""
    return _SAFE_KEY.sub("_", f"{(config.base_url or '').rstrip('/')}|{config.model_id or config.source}")


class ModeMemory:
    """The structured-output mode that worked, per endpoint and model, shared by every process of a
    state folder (SQLite). ``synth doctor`` rewrites it; nothing else ever forgets it."""

    def __init__(self, path: Path | None):
        self._db = SharedDatabase(path) if path is not None else None
        self._local: dict[str, StructuredMode] = {}
        self._lock = threading.Lock()
        self._ready = False

    def _conn(self) -> Any:
        assert self._db is not None
        conn = self._db.conn()
        if not self._ready:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS structured_modes (endpoint TEXT PRIMARY KEY, mode TEXT NOT NULL, "
                "recorded_at REAL NOT NULL, note TEXT)"
            )
            self._ready = True
        return conn

    def get(self, key: str) -> StructuredMode | None:
        with self._lock:
            if key in self._local:
                return self._local[key]
        if self._db is None:
            return None
        row = self._conn().execute("SELECT mode FROM structured_modes WHERE endpoint = ?", (key,)).fetchone()
        if row is None or row[0] not in MODE_ORDER:
            return None
        with self._lock:
            self._local[key] = row[0]
        return row[0]

    def set(self, key: str, mode: StructuredMode, note: str = "") -> None:
        with self._lock:
            self._local[key] = mode
        if self._db is not None:
            self._conn().execute(
                "INSERT INTO structured_modes (endpoint, mode, recorded_at, note) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (endpoint) DO UPDATE SET mode = excluded.mode, "
                "recorded_at = excluded.recorded_at, note = excluded.note",
                (key, mode, time.time(), note[:500]),
            )

    def forget(self, key: str) -> None:
        with self._lock:
            self._local.pop(key, None)
        if self._db is not None:
            self._conn().execute("DELETE FROM structured_modes WHERE endpoint = ?", (key,))

    def all(self) -> dict[str, StructuredMode]:
        if self._db is None:
            return dict(self._local)
        rows = self._conn().execute("SELECT endpoint, mode FROM structured_modes").fetchall()
        return {endpoint: mode for endpoint, mode in rows if mode in MODE_ORDER}
