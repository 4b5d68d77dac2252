"""Small text helpers shared by dedup, diversity and prompts."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

_WS = re.compile(r"\s+")


def normalize_text(value: str) -> str:
    """Lowercase, collapse whitespace, strip: two texts that differ only in layout normalize equal."""
    return _WS.sub(" ", value).strip().lower()


def flatten_value(value: Any) -> str:
    """A readable flat string of any JSON value (lists joined, objects as key: value)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "; ".join(f"{k}: {flatten_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(flatten_value(v) for v in value)
    return json.dumps(value)


def example_text(example: dict[str, Any], fields: list[str] | None = None) -> str:
    """The text of an example used for embeddings and near-duplicate checks."""
    keys = fields if fields is not None else list(example)
    return "\n".join(f"{k}: {flatten_value(example.get(k))}" for k in keys if example.get(k) is not None)


def stable_hash(*parts: Any, length: int = 16) -> str:
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def stable_int(*parts: Any) -> int:
    """A deterministic 31-bit integer (sampling seeds must be stable across processes)."""
    return int(stable_hash(*parts, length=8), 16) & 0x7FFFFFFF
