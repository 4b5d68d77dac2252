"""Human review of a domain's gate: which rows to show a reviewer, and their labels as data of record.

The queue holds accepted and rejected rows alike (the gate errs both ways). It is stratified: rows
are grouped by the gate's verdict (accepted, or the stage that rejected them), by how far their
consensus is from the threshold (four bands) and by matrix cell; the groups take turns, each giving
its row nearest the threshold first, so the first rows shown are the ones the gate was least sure
of, from every corner of the data. A row the reviewer has labelled is never queued for them again.

Labels are an append-only dataset ``review_labels/domain=<d>/`` (Parquet, mirrored to DuckDB). A
label carries the SHA-256 of the example's content it judged: when a row is regenerated its
content changes, and the old label no longer counts for it (``current_labels``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, Field, field_validator

from synth_pipelines.validation.calibration import LabelledRow, cohen_kappa
from synth_pipelines.validation.gates import GateResult
from synth_pipelines.warehouse.storage import Warehouse

LABELS_TABLE = "review_labels"
REVIEW_LABELS = pa.schema(
    [
        ("example_id", pa.string()),
        ("content_hash", pa.string()),
        ("label", pa.string()),  # good | bad
        ("reason", pa.string()),
        ("reviewer", pa.string()),
        ("labelled_at", pa.timestamp("us", tz="UTC")),
        ("gate_verdict", pa.string()),  # what the gate said then: accepted | rejected
        ("gate_stage", pa.string()),  # the rejecting stage, null when accepted
        ("consensus", pa.float64()),
        ("cell_id", pa.string()),
    ]
)
REVIEWER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# The review_agreement check measures nothing below this many current labels.
MIN_CHECK_LABELS = 10
# Distance of a row's consensus from the threshold, in bands (rows without a consensus: their own).
BANDS = (0.05, 0.15, 0.3)


def content_hash(example_json: str) -> str:
    """SHA-256 of the example's content (its JSON, keys sorted): what a label is attached to."""
    try:
        canonical = json.dumps(json.loads(example_json), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        canonical = str(example_json)
    return hashlib.sha256(canonical.encode()).hexdigest()


class JudgeNote(BaseModel):
    model: str
    score: float | None = None
    reason: str | None = None


class ReviewItem(BaseModel):
    """One row as the reviewer sees it, with what the gate decided about it."""

    example_id: str
    content_hash: str
    cell_id: str | None = None
    problem: str = ""
    conditions: dict[str, Any] = Field(default_factory=dict)
    complexity: str | None = None
    example: dict[str, Any] = Field(default_factory=dict)
    verdict: Literal["accepted", "rejected"]
    stage: str | None = None  # the rejecting stage
    reasons: list[str] = Field(default_factory=list)
    consensus: float | None = None
    threshold: float | None = None
    judges: list[JudgeNote] = Field(default_factory=list)

    @property
    def distance(self) -> float:
        """How far the gate was from deciding otherwise (rows without a consensus: far)."""
        if self.consensus is None or self.threshold is None:
            return 1.0
        return abs(self.consensus - self.threshold)

    def stratum(self) -> tuple[str, int, str]:
        band = next((i for i, edge in enumerate(BANDS) if self.distance <= edge), len(BANDS))
        return (self.stage or self.verdict, band, self.cell_id or "")


class LabelIn(BaseModel):
    """A reviewer's verdict on one row, as the page, the API and the MCP tool send it."""

    example_id: str = Field(min_length=1, max_length=200)
    content_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    label: Literal["good", "bad"]
    reason: str = Field(default="", max_length=500)
    reviewer: str = Field(default="reviewer", max_length=64)

    @field_validator("reviewer")
    @classmethod
    def _reviewer(cls, value: str) -> str:
        if not REVIEWER_PATTERN.match(value):
            raise ValueError("a reviewer name is letters, digits and _ . @ - (at most 64)")
        return value


class ReviewProgress(BaseModel):
    """How far a reviewer is, and how well the gate agrees with their labels so far."""

    reviewer: str
    labelled: int
    queued: int
    agree: int
    kappa: float | None = None


def _json(value: Any, default: Any) -> Any:
    try:
        return json.loads(value) if isinstance(value, str) and value else default
    except ValueError:
        return default


def review_items(validated: Iterable[dict[str, Any]], rejected: Iterable[dict[str, Any]]) -> list[ReviewItem]:
    """The rows a reviewer can judge: every accepted row and every rejected row that has an example
    (a generation that failed has nothing to judge)."""
    items = []
    for verdict, rows in (("accepted", validated), ("rejected", rejected)):
        for row in rows:
            example_json = row.get("example_json")
            if not example_json:
                continue
            scores = row.get("validator_scores") or []
            items.append(
                ReviewItem(
                    example_id=str(row["example_id"]),
                    content_hash=content_hash(example_json),
                    cell_id=row.get("cell_id"),
                    problem=str(row.get("problem") or ""),
                    conditions=_json(row.get("conditions_json"), {}),
                    complexity=row.get("complexity"),
                    example=_json(example_json, {"text": example_json}),
                    verdict=verdict,
                    stage=row.get("fail_stage") if verdict == "rejected" else None,
                    reasons=list(row.get("fail_reasons") or []),
                    consensus=row.get("consensus"),
                    threshold=row.get("consensus_threshold"),
                    judges=[
                        JudgeNote(model=s.get("model") or "?", score=s.get("score"), reason=s.get("reason"))
                        for s in scores
                    ],
                )
            )
    return items


def review_queue(items: Sequence[ReviewItem], done: set[tuple[str, str]], count: int) -> list[ReviewItem]:
    """Up to ``count`` rows not in ``done`` ((example_id, content_hash) pairs the reviewer labelled),
    stratified as the module docstring says, nearest the threshold first."""
    strata: dict[tuple[str, int, str], list[ReviewItem]] = {}
    for item in items:
        if (item.example_id, item.content_hash) not in done:
            strata.setdefault(item.stratum(), []).append(item)
    for group in strata.values():
        group.sort(key=lambda i: (i.distance, i.example_id))
    # The groups take turns, the ones holding the closest calls first.
    order = sorted(strata, key=lambda key: (key[1], strata[key][0].distance, key))
    queue: list[ReviewItem] = []
    while len(queue) < count and any(strata[key] for key in order):
        for key in order:
            if strata[key] and len(queue) < count:
                queue.append(strata[key].pop(0))
    return queue


def read_labels(warehouse: Warehouse, domain: str) -> list[dict[str, Any]]:
    """Every label recorded for ``domain``, oldest first."""
    table = warehouse.read_dataset(LABELS_TABLE, domain=domain)
    if table is None:
        return []
    return sorted(table.to_pylist(), key=lambda r: r["labelled_at"])


def current_labels(labels: Iterable[dict[str, Any]], items: Sequence[ReviewItem]) -> list[dict[str, Any]]:
    """The labels that still count: each reviewer's latest label of a row whose content is still
    the content they judged (a regenerated row's old labels drop out)."""
    live = {(i.example_id, i.content_hash) for i in items}
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for label in labels:
        key = (label["reviewer"], label["example_id"], label["content_hash"])
        if key[1:] in live:
            latest[key] = label
    return list(latest.values())


def record_label(warehouse: Warehouse, domain: str, label: LabelIn, item: ReviewItem) -> dict[str, Any]:
    """Append one label (with the gate's verdict on the row at this moment) and mirror it to DuckDB."""
    row = {
        "example_id": label.example_id,
        "content_hash": label.content_hash,
        "label": label.label,
        "reason": label.reason.strip(),
        "reviewer": label.reviewer,
        "labelled_at": datetime.now(UTC),
        "gate_verdict": item.verdict,
        "gate_stage": item.stage,
        "consensus": item.consensus,
        "cell_id": item.cell_id,
    }
    warehouse.append_dataset(LABELS_TABLE, domain, pa.Table.from_pylist([row], schema=REVIEW_LABELS))
    warehouse.sync_mirror(LABELS_TABLE, [domain])
    return row


def progress(reviewer: str, labels: Sequence[dict[str, Any]], items: Sequence[ReviewItem]) -> ReviewProgress:
    """The reviewer's current labels against the gate's verdicts: counts and Cohen's kappa."""
    mine = [label for label in current_labels(labels, items) if label["reviewer"] == reviewer]
    done = {(label["example_id"], label["content_hash"]) for label in mine}
    gate = [label["gate_verdict"] == "accepted" for label in mine]
    truth = [label["label"] == "good" for label in mine]
    return ReviewProgress(
        reviewer=reviewer,
        labelled=len(mine),
        queued=sum(1 for i in items if (i.example_id, i.content_hash) not in done),
        agree=sum(g == t for g, t in zip(gate, truth, strict=True)),
        kappa=round(cohen_kappa(gate, truth), 4) if len(mine) >= 2 else None,
    )


def labelled_rows(labels: Iterable[dict[str, Any]], items: Sequence[ReviewItem]) -> list[LabelledRow]:
    """The current labels as labelled rows for calibration: the example, its problem, conditions and
    complexity as the gate saw them, and the reviewer's verdict (one row per reviewer and example)."""
    by_content = {(i.example_id, i.content_hash): i for i in items}
    rows = []
    for label in current_labels(labels, items):
        item = by_content[(label["example_id"], label["content_hash"])]
        rows.append(
            LabelledRow(
                label=label["label"],
                example=item.example,
                problem=item.problem,
                conditions={k: str(v) for k, v in item.conditions.items()},
                complexity=item.complexity or "medium",
                why=label.get("reason") or "",
            )
        )
    return rows


def review_agreement(
    labels: Iterable[dict[str, Any]], items: Sequence[ReviewItem], min_kappa: float
) -> GateResult:
    """The gate's verdict on each labelled row now against every reviewer's current label: Cohen's
    kappa, compared with ``min_kappa``. Under ``MIN_CHECK_LABELS`` labels nothing is measured."""
    current = current_labels(labels, items)
    accepted = {(i.example_id, i.content_hash): i.verdict == "accepted" for i in items}
    gate = [accepted[(label["example_id"], label["content_hash"])] for label in current]
    truth = [label["label"] == "good" for label in current]
    detail: dict[str, Any] = {
        "labels": len(current),
        "reviewers": sorted({label["reviewer"] for label in current}),
        "agree": sum(g == t for g, t in zip(gate, truth, strict=True)),
        "gate_accepted_bad": sum(g and not t for g, t in zip(gate, truth, strict=True)),
        "gate_rejected_good": sum(t and not g for g, t in zip(gate, truth, strict=True)),
    }
    if len(current) < MIN_CHECK_LABELS:
        return GateResult(
            passed=True,
            value=0.0,
            threshold=min_kappa,
            detail=detail,
            not_measured=f"{len(current)} current review labels of the {MIN_CHECK_LABELS} needed",
        )
    kappa = cohen_kappa(gate, truth)
    return GateResult(passed=kappa >= min_kappa, value=kappa, threshold=min_kappa, detail=detail)
