"""Rule-based validation that runs before any model judges: schema compliance, degenerate text, PII,
and the normalized hash that identifies exact duplicates."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from synth_pipelines.spec.example_schema import example_model, string_min_length
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.text import flatten_value, normalize_text, stable_hash
from synth_pipelines.validation.text_checks import degenerate_text, starts_mid_structure

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


# The generation prompt's own scaffolding (``generation_prompts.GENERATE_USER`` and
# ``EXAMPLE_BLOCK``), normalized: a value holding it repeats the prompt instead of answering it.
# Only phrases no field value has a reason to contain: the bare labels "Problem:" or "Complexity:"
# are left out, since a ticket or a review may well write them.
SCAFFOLD_PHRASES = ("write the example for this problem", "a good example looks like:")


def scaffold_patterns(
    field_names: list[str], conditions: dict[str, Any] | None, domain: str | None = None
) -> list[re.Pattern[str]]:
    """Patterns of the generation prompt's scaffolding as it was rendered for one row: its fixed
    phrases, its "Fields to fill:" label followed by one of the spec's field names, its
    "Conditions:" label followed by the row's first condition as the prompt wrote it (``k=v``),
    and the ``domain``'s identifier as the system prompt names it (``git_recovery``), when it
    has an underscore: a bare word (``logs``) or its hyphenated form (``unit-conversion``) is
    ordinary prose, the snake_case identifier is not."""
    patterns = [re.compile(re.escape(phrase)) for phrase in SCAFFOLD_PHRASES]
    if domain and "_" in domain:
        patterns.append(re.compile(rf"(?<![a-z0-9_]){re.escape(domain.lower())}(?![a-z0-9_])"))
    names = "|".join(re.escape(n.lower()) for n in field_names)
    if names:
        patterns.append(re.compile(rf"fields to fill:\s*[-*]?\s*(?:{names})\b"))
    if conditions:
        key, value = sorted(conditions.items())[0]
        patterns.append(re.compile(re.escape(normalize_text(f"conditions: {key}={value}"))))
    return patterns


def degenerate_reasons(
    example: dict[str, Any],
    *,
    prompt_text: str = "",
    hint_examples: list[dict[str, Any]] | None = None,
    scaffold: list[re.Pattern[str]] | None = None,
    choices: dict[str, set[str]] | None = None,
) -> list[str]:
    """Reasons an example is degenerate: an empty or boilerplate value, derailed text (repetition
    loops, runaways, placeholders, lorem ipsum, random tokens, truncation; see ``text_checks``),
    an echo of the prompt or of its scaffolding (``scaffold``, from :func:`scaffold_patterns`), a
    copy of the spec's hint examples. ``choices`` (from :func:`enum_choices`) exempts a value
    the spec itself offers: an enum of ``none``, ``low``, ``high`` makes ``none`` an answer."""
    reasons: list[str] = []
    prompt_norm = normalize_text(prompt_text)
    hint_values = {normalize_text(flatten_value(v)) for h in (hint_examples or []) for v in h.values()}
    for name, value in example.items():
        text = flatten_value(value)
        norm = normalize_text(text)
        offered = (choices or {}).get(name, set())
        if isinstance(value, str | list) and norm in BOILERPLATE and norm not in offered:
            reasons.append(f"{name}: empty or boilerplate value")
            continue
        reasons += [f"{name}: {reason}" for reason in degenerate_text(text)]
        if isinstance(value, list):
            reasons += _item_reasons(name, value)
        if prompt_norm and len(norm) >= 40 and norm in prompt_norm:
            reasons.append(f"{name}: echoes the prompt")
        elif any(p.search(norm) for p in scaffold or ()):
            reasons.append(f"{name}: repeats the generation prompt's scaffolding")
        if len(norm) >= 20 and norm in hint_values:
            reasons.append(f"{name}: copies the spec's hint example")
    return reasons


def _item_reasons(name: str, items: list[Any]) -> list[str]:
    """An array's string items as values of their own for the comma check, which on the flattened
    array sees only the first item. (Boilerplate words are left alone in items: ``["none"]`` is
    an answer to a list of side effects; a blank item is held to the spec's bound by
    :func:`padded_below_min_length`.)"""
    return [
        f"{name}: item {position} starts with a comma (the tail of other text)"
        for position, item in enumerate(items, start=1)
        if position > 1 and isinstance(item, str) and starts_mid_structure(item)
    ]


def padded_below_min_length(spec: DomainSpec, example: dict[str, Any]) -> list[str]:
    """Strings that meet their ``min_length`` (the spec's, else 1) only with their surrounding
    whitespace (seen: the skill-demonstration template's steps, ``min_length: 5``, held
    ``"\\n    "``), for a string field and for an array's string items. Free-form fields only: an
    enum's values are the spec's own."""
    reasons = []
    for name, field in spec.fields.items():
        value = example.get(name)
        if field.type == "string" and field.enum is None and isinstance(value, str):
            bound = string_min_length(field)
            if value.strip() and len(value.strip()) < bound:
                reasons.append(f"{name}: shorter than min_length {bound} without its whitespace")
        elif field.type == "array" and isinstance(value, list) and field.items is not None:
            if field.items.type != "string" or field.items.enum is not None:
                continue
            bound = string_min_length(field.items)
            for position, item in enumerate(value, start=1):
                if isinstance(item, str) and len(item.strip()) < bound:
                    reasons.append(
                        f"{name}: item {position} shorter than min_length {bound} without its whitespace"
                    )
    return reasons


def enum_choices(spec: DomainSpec) -> dict[str, set[str]]:
    """Each field's enum values (an array's: its items'), normalized as the boilerplate check
    compares them."""
    choices = {}
    for name, field in spec.fields.items():
        enum = field.items.enum if field.type == "array" and field.items is not None else field.enum
        if enum:
            choices[name] = {normalize_text(str(v)) for v in enum}
    return choices


def pii_reasons(example: dict[str, Any]) -> list[str]:
    text = " ".join(flatten_value(v) for v in example.values())
    return [f"contains {kind}" for kind, pat in PII_PATTERNS.items() if pat.search(text)]


def rule_check(
    spec: DomainSpec,
    example_json: str | None,
    *,
    prompt_text: str = "",
    conditions: dict[str, Any] | None = None,
) -> tuple[dict[str, Any] | None, list[str]]:
    """All rule-based checks. Returns the parsed example (if compliant) and every failure reason.
    ``prompt_text`` is the row's problem and ``conditions`` its matrix cell: with them, echoes of
    the generation prompt are caught (an external row has neither)."""
    example, reason = check_compliance(spec, example_json)
    if example is None:
        return None, [reason or "schema: invalid"]
    scaffold = scaffold_patterns(list(spec.fields), conditions, spec.domain) if prompt_text else None
    reasons = degenerate_reasons(
        example,
        prompt_text=prompt_text,
        hint_examples=spec.hints.examples,
        scaffold=scaffold,
        choices=enum_choices(spec),
    )
    reasons += padded_below_min_length(spec, example)
    if spec.privacy.no_pii:
        reasons += pii_reasons(example)
    return example, reasons


def dedup_key(spec: DomainSpec, example: dict[str, Any]) -> str:
    """Normalized hash of the uniqueness fields: equal keys are exact duplicates."""
    parts = [normalize_text(flatten_value(example.get(f))) for f in spec.uniqueness_fields()]
    return stable_hash(parts, length=20)


def example_json_text(example: dict[str, Any]) -> str:
    return json.dumps(example, ensure_ascii=False, sort_keys=False)
