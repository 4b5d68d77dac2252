"""How often the gate is right: score a hand-labelled set with the rules and the judge panel, and find
the consensus threshold that agrees best with the labels (Cohen's kappa).

A labelled file is JSONL, one row per example::

    {"label": "good" | "bad", "example": {...fields...}, "problem": "...",
     "conditions": {"operation": "delete"}, "complexity": "simple", "why": "wrong method"}

``problem``, ``conditions`` and ``complexity`` are what the matrix would have given the generator
(rules and judges see them); ``why`` documents a bad row and is not used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.config import PANEL_MIN_KAPPA_GAIN, ProviderProfile, WeightedModel
from synth_pipelines.spec.loading import LoadedSpec, load_spec
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.rules import failed_rules
from synth_pipelines.spec.text import example_text
from synth_pipelines.validation.apply_gates import Similarity
from synth_pipelines.validation.consensus import ajudge_example
from synth_pipelines.validation.consistency import field_agreement
from synth_pipelines.validation.memory import Embed
from synth_pipelines.validation.rule_checks import rule_check
from synth_pipelines.warehouse.storage import REVIEW_CALIBRATION_FILE, Warehouse

# A domain's own review labels replace the profile's calibration from this many labels on.
MIN_REVIEW_LABELS = 30


class ReviewCalibration(BaseModel):
    """A domain's gate calibrated on its own review labels (``synth calibrate --domain D``)."""

    domain: str
    labels: int
    reviewers: list[str]
    consensus_threshold: float | None
    on_topic_threshold: float | None
    field_agreement_threshold: float  # -1: the gate adds nothing on these labels, off
    panel_kappa_gain: float
    kappa: float
    kappa_low: float  # 95% bootstrap interval of kappa at these thresholds
    kappa_high: float
    accuracy: float
    measured: str

    @property
    def usable(self) -> bool:
        return self.labels >= MIN_REVIEW_LABELS

    def source(self) -> str:
        return (
            f"auto: calibrated on {self.labels} review labels of {self.domain} (kappa {self.kappa:.2f}, "
            f"95% CI {self.kappa_low:.2f} to {self.kappa_high:.2f})"
        )


def resolve_thresholds(
    spec: DomainSpec, profile: ProviderProfile, review: ReviewCalibration | None = None
) -> tuple[DomainSpec, dict[str, str]]:
    """``spec`` with its ``auto`` thresholds taken from the domain's own review calibration when it
    has at least ``MIN_REVIEW_LABELS`` labels, else from the profile's calibration (design defaults
    for a profile nobody calibrated), and where each number came from."""
    calibration = profile.roles.calibration
    resolved, sources = spec.with_panel(
        calibration.consensus_threshold if calibration else None,
        profile.name,
        diversity=calibration.diversity_threshold if calibration else None,
        on_topic=calibration.on_topic_threshold if calibration else None,
        skip_panel=calibration.panel_skip_reason(profile.name) if calibration else None,
        field_agreement=calibration.field_agreement_threshold if calibration else None,
    )
    if review is None or not review.usable:
        if review is not None:
            sources["review_labels"] = (
                f"{review.labels} of the {MIN_REVIEW_LABELS} needed: profile thresholds"
            )
        return resolved, sources
    return _with_review(spec, resolved, sources, review)


def _with_review(
    spec: DomainSpec, resolved: DomainSpec, sources: dict[str, str], review: ReviewCalibration
) -> tuple[DomainSpec, dict[str, str]]:
    """The review calibration's thresholds for the settings the spec leaves ``auto``."""
    update: dict[str, Any] = {}
    values = {
        "consensus_threshold": review.consensus_threshold,  # None: the profile's stays
        # None: the on-topic gate did not help on these labels, so it is off.
        "on_topic_threshold": -1.0 if review.on_topic_threshold is None else review.on_topic_threshold,
        "field_agreement_threshold": review.field_agreement_threshold,
    }
    for name, value in values.items():
        if value is not None and isinstance(getattr(spec.validation, name), str):
            update[name], sources[name] = value, review.source()
    if spec.validation.panel == "auto" and isinstance(spec.validation.consensus_threshold, str):
        off = review.panel_kappa_gain < PANEL_MIN_KAPPA_GAIN
        update["panel"] = "off" if off else "on"
        sources["panel"] = (
            f"auto: skipped, the panel added kappa {review.panel_kappa_gain:+.2f} on the review labels"
            if off
            else f"auto: on, the panel added kappa {review.panel_kappa_gain:+.2f} on the review labels"
        )
    sources["review_labels"] = review.source()
    validation = resolved.validation.model_copy(update=update)
    return resolved.model_copy(update={"validation": validation}), sources


def kappa_interval(
    accepted: Sequence[bool], truth: Sequence[bool], *, draws: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """A 95% bootstrap interval of Cohen's kappa (rows resampled with replacement, fixed seed)."""
    import random

    n = len(truth)
    if n == 0:
        return 0.0, 0.0
    rng = random.Random(seed)
    values = []
    for _ in range(draws):
        picks = [rng.randrange(n) for _ in range(n)]
        values.append(cohen_kappa([accepted[i] for i in picks], [truth[i] for i in picks]))
    values.sort()
    return round(values[int(0.025 * draws)], 4), round(values[int(0.975 * draws) - 1], 4)


def read_review_calibration(warehouse: Warehouse, domain: str) -> ReviewCalibration | None:
    """The domain's review calibration, or None before ``synth calibrate --domain`` made one."""
    payload = warehouse.read_json(REVIEW_CALIBRATION_FILE.format(domain=domain))
    return ReviewCalibration.model_validate(payload) if payload else None


class ResolvedSpec(BaseModel):
    """A spec file as a run uses it: loaded, validated, and its ``auto`` thresholds resolved against
    the profile, with where each number came from."""

    model_config = ConfigDict(frozen=True)

    loaded: LoadedSpec
    spec: DomainSpec
    threshold_sources: dict[str, str]

    @property
    def stored(self) -> DomainSpec:
        """The spec exactly as ``domain_schema`` stores it and the run's assets read it back."""
        return Warehouse.as_stored(self.spec)


def resolved_spec(
    path: str | Path, profile: ProviderProfile, review: ReviewCalibration | None = None
) -> ResolvedSpec:
    """Load the spec file at ``path`` and resolve it against ``profile``: the one way every caller
    (``domain_schema``, the plan, ``synth validate`` and ``calibrate``, the strategy benchmark, the
    judge benchmark) gets the spec a run would use; ``review`` is the domain's own calibration
    (:func:`read_review_calibration`). Raises :class:`SpecError` for a bad file."""
    loaded = load_spec(path)
    spec, sources = resolve_thresholds(loaded.spec, profile, review)
    return ResolvedSpec(loaded=loaded, spec=spec, threshold_sources=sources)


class LabelledRow(BaseModel):
    label: Literal["good", "bad"]
    example: dict[str, Any]
    problem: str = ""
    conditions: dict[str, str] = Field(default_factory=dict)
    complexity: str = "medium"
    why: str = ""


class LabelledFileError(ValueError):
    pass


def load_labelled(path: str | Path) -> list[LabelledRow]:
    """Read a labelled JSONL file; an unreadable row is an error naming the file and line."""
    p = Path(path)
    rows: list[LabelledRow] = []
    for number, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(LabelledRow.model_validate_json(line))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"])) or "<row>"
            raise LabelledFileError(f"{p}:{number}: {where}: {first['msg']}") from None
    if not rows:
        raise LabelledFileError(f"{p}: no labelled rows")
    return rows


class GateScore(BaseModel):
    """What the gate saw in one labelled row: the rule verdict and the panel's consensus."""

    good: bool  # the label
    rules_ok: bool
    rule_reasons: list[str]
    consensus: float | None = None  # None: rejected by the rules (not judged) or no judge answered
    on_topic: float | None = None  # cosine similarity of the example to its problem (rows the rules pass)
    field_agreement: float | None = None  # lowest similarity of two of its text fields (rows the rules pass)


def score_rows(
    spec: DomainSpec,
    rows: Sequence[LabelledRow],
    client: LLMClient | None,
    judges: list[WeightedModel],
    similarity: Similarity | None = None,
    embed: Embed | None = None,
) -> list[GateScore]:
    """Rules on every row (one vectorized query for the spec's rules); on the rows the rules pass,
    the on-topic similarity (with ``similarity``), the cross-field agreement (with ``embed``) and
    the whole panel (no early stop: the full consensus is the score being calibrated)."""
    parsed: list[dict[str, Any] | None] = []
    reasons: list[list[str]] = []
    for row in rows:
        example, found = rule_check(spec, json.dumps(row.example), prompt_text=row.problem)
        parsed.append(example)
        reasons.append(found if example is not None else found or ["schema: invalid"])
    compliant = [i for i, e in enumerate(parsed) if e is not None and not reasons[i]]
    broken = failed_rules(
        spec,
        [parsed[i] or {} for i in compliant],
        [{**rows[i].conditions, "complexity": rows[i].complexity} for i in compliant],
    )
    for i, messages in zip(compliant, broken, strict=True):
        reasons[i] = messages
    to_judge = [i for i in compliant if not reasons[i]]
    on_topic: dict[int, float] = {}
    if similarity is not None and to_judge:
        # A row without a problem (from outside the pipeline) is compared with the spec's description.
        similar = similarity(
            [rows[i].problem or spec.description for i in to_judge],
            [example_text(parsed[i] or {}) for i in to_judge],
        )
        on_topic = dict(zip(to_judge, similar, strict=True))
    agreement: dict[int, float] = {}
    if embed is not None and to_judge:
        measured = field_agreement([parsed[i] or {} for i in to_judge], embed)
        agreement = {i: a.score for i, a in zip(to_judge, measured, strict=True)}
    consensus: dict[int, float | None] = {}
    if client is not None and to_judge:

        async def judge(i: int) -> float | None:
            verdict = await ajudge_example(
                client,
                spec,
                judges,
                example_id=f"labelled-{i}",
                problem=rows[i].problem,
                example=parsed[i] or {},
                early_stop=False,
                conditions=rows[i].conditions,
            )
            return verdict.consensus

        try:
            values = client.pool(judge, to_judge, width=client.concurrency_for(j.model for j in judges))
        finally:
            client.flush()
        consensus = dict(zip(to_judge, values, strict=True))
    return [
        GateScore(
            good=row.label == "good",
            rules_ok=not reasons[i],
            rule_reasons=reasons[i],
            consensus=consensus.get(i),
            on_topic=on_topic.get(i),
            field_agreement=agreement.get(i),
        )
        for i, row in enumerate(rows)
    ]


def cohen_kappa(predicted: Sequence[bool], truth: Sequence[bool]) -> float:
    """Cohen's kappa of two binary raters: agreement beyond what chance would give (1 perfect, 0
    chance, < 0 worse than chance). 0 when chance agreement is total (one rater constant)."""
    n = len(truth)
    if n == 0:
        return 0.0
    observed = sum(p == t for p, t in zip(predicted, truth, strict=True)) / n
    p_yes, t_yes = sum(predicted) / n, sum(truth) / n
    expected = p_yes * t_yes + (1 - p_yes) * (1 - t_yes)
    return 0.0 if expected >= 1 else (observed - expected) / (1 - expected)


class Agreement(BaseModel):
    """How a gate's accept/reject agrees with the labels at one threshold (and on-topic minimum)."""

    threshold: float | None
    on_topic_threshold: float | None = None
    kappa: float
    accuracy: float
    true_accept: int  # good, accepted
    false_accept: int  # bad, accepted
    true_reject: int  # bad, rejected
    false_reject: int  # good, rejected
    rows: int

    def summary(self) -> str:
        at = f"threshold {self.threshold:.3f}: " if self.threshold is not None else ""
        if self.on_topic_threshold is not None:
            at = f"{at[:-2]}, on_topic >= {self.on_topic_threshold:.3f}: "
        return (
            f"{at}kappa {self.kappa:.3f}, accuracy {self.accuracy:.1%} over {self.rows} rows "
            f"(accepted good {self.true_accept}, accepted bad {self.false_accept}, "
            f"rejected bad {self.true_reject}, rejected good {self.false_reject})"
        )


def agreement(accepted: Sequence[bool], truth: Sequence[bool], threshold: float | None) -> Agreement:
    pairs = list(zip(accepted, truth, strict=True))
    return Agreement(
        threshold=threshold,
        kappa=round(cohen_kappa(accepted, truth), 4),
        accuracy=round(sum(a == t for a, t in pairs) / len(pairs), 4) if pairs else 0.0,
        true_accept=sum(a and t for a, t in pairs),
        false_accept=sum(a and not t for a, t in pairs),
        true_reject=sum(not a and not t for a, t in pairs),
        false_reject=sum(not a and t for a, t in pairs),
        rows=len(pairs),
    )


def gate_accepts(scores: Sequence[GateScore], threshold: float, min_on_topic: float = -1.0) -> list[bool]:
    """What the gate decides at ``threshold``: the rules pass, the example is on topic (when
    ``min_on_topic`` is above -1) and the consensus reaches the threshold."""
    return [
        s.rules_ok
        and s.consensus is not None
        and round(s.consensus, 9) >= threshold
        and (min_on_topic <= -1 or (s.on_topic is not None and s.on_topic >= min_on_topic))
        for s in scores
    ]


def best_threshold(scores: Sequence[GateScore]) -> Agreement:
    """The consensus threshold with the highest kappa against the labels (ties: the higher accuracy,
    then the lower threshold, the one that keeps more data). Candidates are the consensus values
    seen, plus 0 and a threshold above every value (reject all that reached the panel)."""
    truth = [s.good for s in scores]
    seen = sorted({round(s.consensus, 6) for s in scores if s.consensus is not None})
    candidates = sorted({0.0, *seen, min(1.0, (seen[-1] if seen else 0.0) + 1e-6)})
    best: Agreement | None = None
    for t in candidates:
        result = agreement(gate_accepts(scores, t), truth, t)
        if best is None or (result.kappa, result.accuracy) > (best.kappa, best.accuracy):
            best = result
    assert best is not None
    return best


def best_thresholds(scores: Sequence[GateScore]) -> Agreement:
    """The (consensus, on-topic) pair with the highest kappa (same tie rules as
    :func:`best_threshold`); the on-topic gate stays off (None) unless it raises kappa."""
    truth = [s.good for s in scores]
    consensus_values = sorted({0.0, *(round(s.consensus, 6) for s in scores if s.consensus is not None)})
    topic_values = sorted({-1.0, *(round(s.on_topic, 4) for s in scores if s.on_topic is not None)})
    best: Agreement | None = None
    for t in consensus_values:
        for m in topic_values:
            result = agreement(gate_accepts(scores, t, m), truth, t)
            result.on_topic_threshold = None if m <= -1 else m
            if best is None or (result.kappa, result.accuracy) > (best.kappa, best.accuracy):
                best = result
    assert best is not None
    return best


def lodo_decisions(
    gates: Mapping[str, Sequence[GateScore]], values: Mapping[str, Sequence[float | None]]
) -> dict[str, list[bool]]:
    """Leave one domain out: per domain, the gate's decisions with ``values`` as its signal (in
    place of the consensus; None rejects) at the threshold with the highest kappa on the *other*
    domains pooled. What a threshold calibrated elsewhere does on a domain nobody tuned it for."""
    signal = {
        d: [s.model_copy(update={"consensus": v}) for s, v in zip(gates[d], values[d], strict=True)]
        for d in gates
    }
    decisions: dict[str, list[bool]] = {}
    for domain in gates:
        others = [x for other in gates if other != domain for x in signal[other]]
        threshold = best_threshold(others).threshold or 0.0
        decisions[domain] = gate_accepts(signal[domain], threshold)
    return decisions


class DomainCalibration(BaseModel):
    """One labelled set's result: the gate's scores, its best threshold, and the agreement of the
    rules alone (every row the rules pass accepted)."""

    domain: str
    file: str
    scores: list[GateScore]
    best: Agreement
    best_with_on_topic: Agreement
    rules_only: Agreement


def calibrate(
    sets: Sequence[tuple[DomainSpec, str, list[LabelledRow]]],
    client: LLMClient | None,
    judges: list[WeightedModel],
    similarity: Similarity | None = None,
    embed: Embed | None = None,
) -> tuple[list[DomainCalibration], Agreement]:
    """Score every labelled set (spec, file, rows) and find each one's best thresholds and the ones
    best over all of them pooled (a panel's threshold must hold across domains); with
    ``similarity`` the on-topic gate is calibrated jointly, and kept only where it raises kappa;
    with ``embed`` each row's cross-field agreement is measured (:func:`field_agreement_threshold`)."""
    results: list[DomainCalibration] = []
    for spec, file, rows in sets:
        scores = score_rows(spec, rows, client, judges, similarity, embed)
        truth = [s.good for s in scores]
        results.append(
            DomainCalibration(
                domain=spec.domain,
                file=file,
                scores=scores,
                best=best_threshold(scores),
                best_with_on_topic=best_thresholds(scores),
                rules_only=agreement([s.rules_ok for s in scores], truth, None),
            )
        )
    pooled_scores = [s for r in results for s in r.scores]
    pooled = best_thresholds(pooled_scores) if similarity is not None else best_threshold(pooled_scores)
    return results, pooled


def field_agreement_threshold(results: Sequence[DomainCalibration]) -> Agreement | None:
    """The cross-field agreement minimum with the highest kappa over the labelled sets pooled (the
    rules still apply), or None when it does not raise kappa over the rules alone (gate off)."""
    scores = [s.model_copy(update={"consensus": s.field_agreement}) for r in results for s in r.scores]
    if not any(s.field_agreement is not None for s in scores):
        return None
    best = best_threshold(scores)
    rules_only = agreement([s.rules_ok for s in scores], [s.good for s in scores], None)
    return best if best.kappa > rules_only.kappa else None


def panel_kappa_gain(results: Sequence[DomainCalibration]) -> float:
    """What the panel adds over the rules, pooled over the labelled sets: kappa of rules + panel at
    its best consensus threshold minus kappa of the rules alone (0 when the best threshold is 0,
    the panel then never rejects what the rules pass)."""
    scores = [s for r in results for s in r.scores]
    truth = [s.good for s in scores]
    with_panel = best_threshold(scores)
    rules_only = agreement([s.rules_ok for s in scores], truth, None)
    return round(with_panel.kappa - rules_only.kappa, 4)


# The share of the lowest diversity the generator reached that still passes: the gate flags a
# collapse (a run far below what this generator normally does), not ordinary variation.
DIVERSITY_MARGIN = 0.8


def diversity_calibration(wh: Warehouse) -> tuple[dict[str, float], float | None]:
    """The mean pairwise cosine distance each domain in the warehouse reached (from its
    ``example_embeddings`` statistics), and the diversity threshold they support:
    ``DIVERSITY_MARGIN`` x the lowest, rounded down to 0.01. None when no domain has any."""
    import math

    reached = {
        domain: float(value)
        for domain in wh.partition_domains("example_embeddings")
        if (value := wh.diversity_stats(domain).get("mean_pairwise_cosine_distance")) is not None
    }
    if not reached:
        return {}, None
    return reached, math.floor(DIVERSITY_MARGIN * min(reached.values()) * 100) / 100


def calibrate_domain(
    spec: DomainSpec,
    rows: list[LabelledRow],
    reviewers: list[str],
    client: LLMClient | None,
    judges: list[WeightedModel],
    similarity: Similarity | None = None,
    embed: Embed | None = None,
) -> ReviewCalibration:
    """The domain's gate calibrated on its review labels: the kappa-best consensus threshold (with
    the on-topic minimum where it helps), the cross-field agreement minimum, what the panel adds,
    and kappa at those thresholds with a bootstrap interval."""
    from datetime import UTC, datetime

    results, pooled = calibrate([(spec, "review_labels", rows)], client, judges, similarity, embed)
    fields = field_agreement_threshold(results)
    scores = results[0].scores
    decided = gate_accepts(scores, pooled.threshold or 0.0, pooled.on_topic_threshold or -1.0)
    low, high = kappa_interval(decided, [s.good for s in scores])
    return ReviewCalibration(
        domain=spec.domain,
        labels=len(rows),
        reviewers=sorted(set(reviewers)),
        consensus_threshold=pooled.threshold,
        on_topic_threshold=pooled.on_topic_threshold,
        field_agreement_threshold=round(fields.threshold or 0.0, 4) if fields else -1.0,
        panel_kappa_gain=panel_kappa_gain(results),
        kappa=pooled.kappa,
        kappa_low=low,
        kappa_high=high,
        accuracy=pooled.accuracy,
        measured=datetime.now(UTC).isoformat(timespec="seconds"),
    )
