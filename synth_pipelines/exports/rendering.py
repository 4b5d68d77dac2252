"""How an example's fields read as text in every export (prompts, answers, queries, documents)."""

from __future__ import annotations

from typing import Any

from synth_pipelines.spec.text import flatten_value


def render(values: dict[str, Any], fields: list[str]) -> str:
    """Fields as text: one field alone is its value; several are ``name: value`` lines."""
    present = [f for f in fields if values.get(f) is not None]
    if len(present) == 1:
        value = values[present[0]]
        return (
            "\n".join(f"- {flatten_value(v)}" for v in value)
            if isinstance(value, list)
            else flatten_value(value)
        )
    parts = []
    for f in present:
        value = values[f]
        if isinstance(value, list):
            parts.append(f"{f}:\n" + "\n".join(f"- {flatten_value(v)}" for v in value))
        else:
            parts.append(f"{f}: {flatten_value(value)}")
    return "\n".join(parts)
