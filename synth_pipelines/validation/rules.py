"""Rule-based validation that runs before any model judges: schema compliance, degenerate text, PII,
and the normalized hash that identifies exact duplicates."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, ValidationError

from synth_pipelines.spec.example_schema import example_model
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.text import flatten_value, normalize_text, stable_hash

DIGIT_RUN = re.compile(r"\d{12,}")
CHAR_RUN = re.compile(r"(.)\1{9,}")
PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}")  # {{name}}: single braces are legit (e.g. /users/{id})
MARKUP = re.compile(r"</?(?:a|img|p|div|span|pre|br|html|body|script)\b[^>]*>", re.IGNORECASE)
UPPER_RUN = re.compile(r"[A-Z]{2,}")


def random_token(text: str) -> str | None:
    """The first whitespace-free token that looks random rather than written: 20+ characters
    mixing at least two digits, two runs of 2+ capitals and lowercase letters (base64-like
    garbage, keys and tokens; camelCase has single capitals, hashes and UUIDs no capitals)."""
    for token in text.split():
        token = token.strip(".,;:!?()[]{}'\"")
        if len(token) < 20:
            continue
        digits = sum(c.isdigit() for c in token)
        lower = sum(c.islower() for c in token)
        if digits >= 2 and lower >= 2 and len(UPPER_RUN.findall(token)) >= 2:
            return token
    return None


BOILERPLATE = {"", "n/a", "na", "none", "null", "todo", "tbd", "string", "example", "lorem ipsum", "..."}
PII_PATTERNS = {
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    "phone": re.compile(r"(?:\+\d{1,3}[\s-]?)?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b"),
    "card_number": re.compile(r"\b(?:\d[ -]?){13,19}\b"),
    "ip_address": re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
}


class RuleVerdict(BaseModel):
    compliant: bool
    reasons: list[str]


def check_compliance(spec: DomainSpec, example_json: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """Validate against the spec's pydantic model. Returns (normalized dict, None) or (None, reason)."""
    if not example_json:
        return None, "no example was generated"
    try:
        obj = example_model(spec).model_validate_json(example_json)
    except ValidationError as e:
        err = e.errors()[0]
        return None, f"schema: {'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}"
    return obj.model_dump(mode="json"), None


def repetition_ratio(text: str) -> float:
    """Share of word trigrams that repeat an earlier trigram (0 = no repetition)."""
    words = text.lower().split()
    if len(words) < 6:
        return 0.0
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    counts = Counter(grams)
    repeated = sum(c - 1 for c in counts.values())
    return repeated / len(grams)


def degenerate_reasons(
    example: dict[str, Any],
    *,
    prompt_text: str = "",
    max_repetition: float = 0.35,
    hint_examples: list[dict[str, Any]] | None = None,
) -> list[str]:
    """Reasons an example is degenerate: repetition, digit/char runs, prompt echo, copies of the spec's
    hint examples, empty values."""
    reasons: list[str] = []
    prompt_norm = normalize_text(prompt_text)
    hint_values = {normalize_text(flatten_value(v)) for h in (hint_examples or []) for v in h.values()}
    for name, value in example.items():
        text = flatten_value(value)
        norm = normalize_text(text)
        if isinstance(value, str | list) and norm in BOILERPLATE:
            reasons.append(f"{name}: empty or boilerplate value")
            continue
        if DIGIT_RUN.search(text):
            reasons.append(f"{name}: long digit run")
        if CHAR_RUN.search(text):
            reasons.append(f"{name}: long repeated-character run")
        if PLACEHOLDER.search(text):
            reasons.append(f"{name}: unfilled template placeholder")
        if MARKUP.search(text):
            reasons.append(f"{name}: contains HTML markup")
        if random_token(text) is not None:
            reasons.append(f"{name}: random-looking token (garbage, a key or a token)")
        if repetition_ratio(text) > max_repetition:
            reasons.append(f"{name}: repetitive text ({repetition_ratio(text):.2f} repeated trigrams)")
        if prompt_norm and len(norm) >= 40 and norm in prompt_norm:
            reasons.append(f"{name}: echoes the prompt")
        if len(norm) >= 20 and norm in hint_values:
            reasons.append(f"{name}: copies the spec's hint example")
    return reasons


def pii_reasons(example: dict[str, Any]) -> list[str]:
    text = " ".join(flatten_value(v) for v in example.values())
    return [f"contains {kind}" for kind, pat in PII_PATTERNS.items() if pat.search(text)]


def rule_check(
    spec: DomainSpec, example_json: str | None, *, prompt_text: str = ""
) -> tuple[dict[str, Any] | None, list[str]]:
    """All rule-based checks. Returns the parsed example (if compliant) and every failure reason."""
    example, reason = check_compliance(spec, example_json)
    if example is None:
        return None, [reason or "schema: invalid"]
    reasons = degenerate_reasons(example, prompt_text=prompt_text, hint_examples=spec.hints.examples)
    if spec.privacy.no_pii:
        reasons += pii_reasons(example)
    return example, reasons


def dedup_key(spec: DomainSpec, example: dict[str, Any]) -> str:
    """Normalized hash of the uniqueness fields: equal keys are exact duplicates."""
    parts = [normalize_text(flatten_value(example.get(f))) for f in spec.uniqueness_fields()]
    return stable_hash(parts, length=20)


def example_json_text(example: dict[str, Any]) -> str:
    return json.dumps(example, ensure_ascii=False, sort_keys=False)
