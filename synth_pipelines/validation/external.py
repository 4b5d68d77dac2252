"""Validate examples that did not come from this pipeline (``synth validate FILE --domain D``)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from synth_pipelines.llm.client import LLMClient
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.rules import failed_rules
from synth_pipelines.validation.consensus import judge_example, resolve_judges
from synth_pipelines.validation.consistency import field_agreement
from synth_pipelines.validation.memory import Embed
from synth_pipelines.validation.rule_checks import dedup_key, rule_check


def _conditions(spec: DomainSpec, row: dict[str, Any]) -> dict[str, str]:
    """The matrix conditions of an outside row, for the spec's rules: a ``conditions`` object, or
    columns named after the dimensions (and ``complexity``); rules whose ``when`` needs a missing
    one do not apply."""
    given: dict[str, Any] = row["conditions"] if isinstance(row.get("conditions"), dict) else {}
    names = [*spec.matrix.dimensions, "complexity"]
    return {n: str(v) for n in names if (v := given.get(n, row.get(n) if n not in spec.fields else None))}


def validate_rows(
    spec: DomainSpec,
    rows: list[dict[str, Any]],
    client: LLMClient | None,
    embed: Embed | None = None,
) -> dict[str, Any]:
    """Rule checks (the spec's SQL rules included), exact dedup, the cross-field agreement gate
    (with ``embed``, when the spec's ``field_agreement_threshold`` is on) and, with a client and
    the spec's panel on, the spec's validator models, row by row.

    A row is either the example itself or holds it as ``example_json``.
    """
    judges = resolve_judges(spec, client) if client is not None else []
    seen: dict[str, int] = {}
    results: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]] = []
    for i, row in enumerate(rows):
        if "_error" in row:
            results.append({"row": i, "passed": False, "stage": "read", "reasons": [row["_error"]]})
            continue
        raw = (
            row.get("example_json")
            if "example_json" in row
            else json.dumps({k: v for k, v in row.items() if k in spec.fields})
        )
        example, reasons = rule_check(spec, raw)
        if example is not None and not reasons and spec.rules:
            reasons = failed_rules(spec, [example], [_conditions(spec, row)])[0]
        if example is None or reasons:
            results.append({"row": i, "passed": False, "stage": "rules", "reasons": reasons})
            continue
        key = dedup_key(spec, example)
        if key in seen:
            results.append(
                {
                    "row": i,
                    "passed": False,
                    "stage": "dedup",
                    "reasons": [f"exact duplicate of row {seen[key]}"],
                }
            )
            continue
        seen[key] = i
        entry: dict[str, Any] = {"row": i, "passed": True, "stage": None, "reasons": []}
        results.append(entry)
        pending.append((entry, example, row, key))
    minimum = spec.validation.min_field_agreement
    if embed is not None and minimum > -1 and pending:
        for (entry, *_), agreement in zip(
            pending, field_agreement([p[1] for p in pending], embed), strict=True
        ):
            reason = agreement.rejection(minimum)
            if reason:
                entry.update(passed=False, stage="inconsistent_fields", reasons=[reason])
    for entry, example, row, key in pending:
        if client is None or not entry["passed"]:
            continue
        if not spec.validation.judges_run:
            entry["panel"] = (
                "skipped: validation.panel is off (the profile's calibration found it uninformative)"
            )
            continue
        verdict = judge_example(
            client,
            spec,
            judges,
            example_id=f"external-{key}",
            # No problem: judged against the spec's description and field meanings.
            problem=str(row.get("problem") or ""),
            example=example,
            conditions=_conditions(spec, row),
        )
        entry.update(
            consensus=verdict.consensus,
            spread=verdict.spread,
            validators=[
                {"model": j.model, "score": j.score, "reason": j.reason, "error": j.error}
                for j in verdict.judges
            ],
        )
        if not verdict.passed:
            entry.update(passed=False, stage="consensus", reasons=[verdict.reason or "below threshold"])
    passed = sum(r["passed"] for r in results)
    return {
        "domain": spec.domain,
        "spec_version": spec.version_str,
        "validators": [j.model_dump() for j in judges],
        "summary": {
            "rows": len(rows),
            "passed": passed,
            "pass_rate": passed / len(rows) if rows else 0.0,
            "rejected_by_stage": dict(Counter(r["stage"] for r in results if not r["passed"])),
        },
        "rows": results,
    }
