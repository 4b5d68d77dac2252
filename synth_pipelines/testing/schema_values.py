"""Deterministic values that satisfy a bounded JSON schema: stand-in model output for tests and benchmarks."""

from __future__ import annotations

import random
from typing import Any

WORDS = [
    "customer",
    "order",
    "invoice",
    "account",
    "token",
    "product",
    "shipping",
    "address",
    "report",
    "revenue",
    "churn",
    "cohort",
    "latency",
    "payload",
    "endpoint",
    "schema",
    "metric",
    "forecast",
    "segment",
    "region",
    "warehouse",
    "pipeline",
    "record",
]


def instance_from_schema(schema: dict[str, Any], rng: random.Random) -> Any:
    """A value that satisfies a (bounded) JSON schema: enough of JSON schema for our specs."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    if "anyOf" in schema:
        return instance_from_schema(schema["anyOf"][0], rng)
    t = schema.get("type")
    if t == "object":
        return {k: instance_from_schema(v, rng) for k, v in schema.get("properties", {}).items()}
    if t == "array":
        lo, hi = schema.get("minItems", 1), min(schema.get("maxItems", 3), 3)
        return [
            instance_from_schema(schema.get("items", {"type": "string"}), rng)
            for _ in range(rng.randint(lo, max(lo, hi)))
        ]
    if t == "integer":
        return rng.randint(int(schema.get("minimum", 0)), int(min(schema.get("maximum", 100), 100)))
    if t == "number":
        return round(
            rng.uniform(float(schema.get("minimum", 0)), float(min(schema.get("maximum", 1.0), 1.0))), 3
        )
    if t == "boolean":
        return rng.random() < 0.5
    lo, hi = schema.get("minLength", 1), schema.get("maxLength", 80)
    words = rng.sample(WORDS, len(WORDS))
    if str(schema.get("pattern", "")).startswith("^/"):
        return ("/" + "/".join(words[:3]))[:hi]
    text = " ".join(words)
    target = rng.randint(min(hi, max(lo, 20)), min(hi, max(lo, 90)))
    while len(text) < target:
        text += " " + " ".join(f"{w}{len(text)}" for w in words[:3])
    # Cut at a word boundary: a value cut mid-word ("... invoice acco") reads as truncated output,
    # which the degenerate-text checks reject, and stand-in output should be well formed.
    cut = text[:target]
    if " " in cut and target < len(text) and text[target] != " ":
        cut = cut.rsplit(" ", 1)[0]
    cut = cut.strip()
    return cut if len(cut) >= lo else text[:hi]
