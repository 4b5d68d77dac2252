"""The quality gates behind the asset checks: each measures one thing and compares it with a threshold
taken from the spec (or run config). Plain functions over rows, so they are tested without Dagster."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.validation.rule_checks import check_compliance

# The rejection stages of rows the panel judged: failed consensus, or passed it and were then
# dropped as near duplicates of an accepted row. Every judged-rows figure comes from here.
JUDGED_STAGES = ("consensus", "near_duplicate")
PASSED_JUDGED_STAGES = ("near_duplicate",)


class JudgedPassRate(BaseModel):
    """Of the rows the validator panel judged, how many met the consensus threshold."""

    judged: int
    passed: int

    @property
    def rate(self) -> float | None:
        return self.passed / self.judged if self.judged else None


def judged_pass_rate(accepted: int, rejected_by_stage: Mapping[Any, int]) -> JudgedPassRate:
    """The one definition of the consensus pass rate (the gate, the asset's metadata, the dataset
    card and the dbt mart ``domain_quality_summary`` agree with it): accepted rows and rows rejected
    at a judged stage were judged; accepted rows and judged rows dropped only as near duplicates
    passed. Rows rejected before the panel (rules, exact or memory duplicates, off topic) were not
    judged and count in neither."""
    judged_rejects = sum(int(rejected_by_stage.get(stage, 0)) for stage in JUDGED_STAGES)
    passed_rejects = sum(int(rejected_by_stage.get(stage, 0)) for stage in PASSED_JUDGED_STAGES)
    return JudgedPassRate(judged=accepted + judged_rejects, passed=accepted + passed_rejects)


class GateResult(BaseModel):
    passed: bool
    value: float
    threshold: float
    detail: dict[str, Any] = {}
    # Why nothing was measured (the gate's stage did not run); such a gate passes and says so.
    not_measured: str | None = None

    def describe(self, name: str, comparison: str = ">=") -> str:
        if self.not_measured:
            return f"{name} not measured: {self.not_measured}{'' if self.passed else ': FAILS'}"
        verdict = "passes" if self.passed else "FAILS"
        return f"{name} {self.value:.4f} {comparison} {self.threshold:.4f}: {verdict}"


def schema_compliance(spec: DomainSpec, validated: list[dict[str, Any]]) -> GateResult:
    """Share of stored examples that validate against the spec's model. Must be exactly 1.0."""
    failures = []
    for row in validated:
        _, reason = check_compliance(spec, row.get("example_json"))
        if reason is not None:
            failures.append({"example_id": row.get("example_id"), "reason": reason})
    rate = 1.0 - len(failures) / len(validated) if validated else 1.0
    return GateResult(
        passed=not failures,
        value=rate,
        threshold=1.0,
        detail={"checked": len(validated), "failures": failures[:20]},
    )


def consensus_pass_rate(
    spec: DomainSpec,
    validated: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    *,
    min_pass_rate: float | None = None,
) -> GateResult:
    """Of the examples the validator models judged, the share whose consensus met the threshold.
    With the spec's panel off (skipped by calibration) there is no rate to measure and the gate
    says so; it still fails when nothing at all was accepted (zero rows never pass)."""
    threshold = spec.validation.min_pass_rate if min_pass_rate is None else min_pass_rate
    if not spec.validation.judges_run:
        return GateResult(
            passed=bool(validated),
            value=0.0,
            threshold=threshold,
            detail={"judged": 0, "accepted_unjudged": len(validated)},
            not_measured="the validator panel was skipped (validation.panel is off for this run)"
            + ("" if validated else "; and no example passed the gates before it"),
        )
    counted = judged_pass_rate(len(validated), Counter(r.get("fail_stage") for r in rejected))
    judged, passed, rate = counted.judged, counted.passed, counted.rate or 0.0
    consensus = [r["consensus"] for r in validated if r.get("consensus") is not None]
    return GateResult(
        passed=judged > 0 and rate >= threshold,
        value=rate,
        threshold=threshold,
        detail={
            "judged": judged,
            "passed": passed,
            "consensus_threshold": spec.validation.threshold,
            "mean_consensus_of_accepted": sum(consensus) / len(consensus) if consensus else None,
        },
    )


def exact_duplicates(validated: list[dict[str, Any]]) -> GateResult:
    """Number of stored examples whose normalized uniqueness key repeats. Must be 0."""
    counts = Counter(r.get("dedup_key") for r in validated)
    dupes = {k: c for k, c in counts.items() if c > 1}
    n = sum(c - 1 for c in dupes.values())
    return GateResult(
        passed=n == 0, value=float(n), threshold=0.0, detail={"duplicate_keys": list(dupes)[:20]}
    )


def target_reached(n_validated: int, target: int) -> GateResult:
    return GateResult(passed=n_validated >= target, value=float(n_validated), threshold=float(target))


def diversity(
    mean_pairwise_distance: float | None, threshold: float, *, examples: int | None = None
) -> GateResult:
    """Mean pairwise cosine distance of the stored examples against ``threshold``. Under two
    examples there is no pair to measure: the gate fails and says so (not "0.000 < threshold")."""
    if mean_pairwise_distance is None:
        count = "no stored examples" if not examples else f"{examples} stored example"
        return GateResult(
            passed=False,
            value=0.0,
            threshold=threshold,
            not_measured=f"{count}, and diversity needs at least two to compare",
        )
    return GateResult(
        passed=mean_pairwise_distance >= threshold, value=mean_pairwise_distance, threshold=threshold
    )
