"""Cross-field agreement: do an example's text fields talk about the same thing?

A wrong example often has one field that has left the others: an explanation about another call,
a diagnosis the log does not show, a rationale for another label, an assistant turn about the
weather. The measure is the lowest cosine similarity (MiniLM, the embedder every profile has)
between two of the example's text fields; below ``validation.field_agreement_threshold`` the row is
rejected at stage ``inconsistent_fields`` before any judge call. It is a cheap stand-in for NLI
(no NLI model is installable on these machines); ``make bench-judges`` measures it leave one
domain out on six domains nobody tuned it on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from synth_pipelines.spec.text import flatten_value
from synth_pipelines.validation.memory import Embed

# Shorter values (a method, a label, a number) carry no topic to compare.
MIN_FIELD_CHARS = 20


class FieldAgreement(BaseModel):
    """The least similar pair of an example's text fields (``score`` 1.0 and no pair with fewer
    than two text fields: nothing to compare)."""

    score: float
    fields: tuple[str, str] | None = None

    def rejection(self, minimum: float) -> str | None:
        """Why the example fails a ``minimum`` agreement (None: it passes, or the gate is off)."""
        if minimum <= -1 or self.fields is None or self.score >= minimum:
            return None
        a, b = self.fields
        return f"fields disagree: {a} and {b} have similarity {self.score:.3f}, below {minimum:.3f}"


def field_texts(example: dict[str, Any]) -> dict[str, str]:
    """The example's fields as text (lists and objects flattened), the ones long enough to compare."""
    texts = {name: flatten_value(value) for name, value in example.items()}
    return {name: text for name, text in texts.items() if len(text.strip()) >= MIN_FIELD_CHARS}


def field_agreement(examples: Sequence[dict[str, Any]], embed: Embed) -> list[FieldAgreement]:
    """For each example, its least similar pair of text fields, in one embedding batch."""
    per_example = [field_texts(e) for e in examples]
    unique = sorted({t for texts in per_example for t in texts.values()})
    if not unique:
        return [FieldAgreement(score=1.0) for _ in examples]
    vectors = dict(zip(unique, embed(unique), strict=True))  # L2-normalized
    results = []
    for texts in per_example:
        names = list(texts)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        if not pairs:
            results.append(FieldAgreement(score=1.0))
            continue
        scored = [(float(vectors[texts[a]] @ vectors[texts[b]]), (a, b)) for a, b in pairs]
        score, fields = min(scored)
        results.append(FieldAgreement(score=score, fields=fields))
    return results
