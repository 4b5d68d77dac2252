"""Agent outcomes: how agents that use a domain's data fare. They close the feedback loop.

Outcomes arrive three ways — :func:`record_outcomes` (Python), ``synth record-outcome`` (CLI) and
JSONL/Parquet files dropped in the inbox folder (:func:`ingest_inbox`, run by the sensor) — and land
in the DuckDB table ``agent_outcomes``. Bad rows (unsafe or unknown domain, missing fields,
duplicate ids) are rejected with a reason; the good rows of the same batch are kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field, ValidationError, field_validator

from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name
from synth_pipelines.warehouse.storage import (
    StoragePath,
    Warehouse,
    atomic_write_text,
    fresh_listing,
    move_file,
    read_rows_file,
)

OUTCOMES_TABLE = "agent_outcomes"
INBOX = "outcomes_inbox"


class AgentOutcome(BaseModel):
    """One task outcome reported by an agent."""

    outcome_id: str = Field(min_length=1, max_length=200)
    domain: str
    cell_id: str | None = Field(default=None, max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=32)
    success: bool
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    agent: str = Field(default="unknown", min_length=1, max_length=200)

    @field_validator("domain")
    @classmethod
    def _safe_domain(cls, value: str) -> str:
        try:
            return validate_domain_name(value)
        except UnsafeDomainError as e:
            raise ValueError(str(e)) from None

    @field_validator("recorded_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)


class RejectedOutcome(BaseModel):
    position: int
    outcome_id: str | None
    reason: str


class IngestReport(BaseModel):
    accepted: int = 0
    rejected: list[RejectedOutcome] = Field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.accepted} outcome(s) recorded, {len(self.rejected)} rejected"]
        lines += [f"  row {r.position} ({r.outcome_id or 'no id'}): {r.reason}" for r in self.rejected[:20]]
        return "\n".join(lines)


def _ensure_table(conn: Any) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {OUTCOMES_TABLE} (outcome_id VARCHAR PRIMARY KEY, "
        "domain VARCHAR NOT NULL, cell_id VARCHAR, tags VARCHAR[], success BOOLEAN NOT NULL, "
        "recorded_at TIMESTAMPTZ NOT NULL, agent VARCHAR NOT NULL)"
    )


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<row>"
    msg = str(first["msg"]).removeprefix("Value error, ")
    return f"{loc}: {'missing' if first['type'] == 'missing' else msg}"


def record_outcomes(
    warehouse: Warehouse,
    rows: Iterable[AgentOutcome | dict[str, Any]],
    *,
    known_domains: set[str] | None = None,
) -> IngestReport:
    """Validate and insert outcomes; return what was accepted and why the rest was rejected."""
    report = IngestReport()
    valid: list[AgentOutcome] = []
    seen: set[str] = set()
    for position, row in enumerate(rows):
        raw_id = row.outcome_id if isinstance(row, AgentOutcome) else (row or {}).get("outcome_id")
        try:
            outcome = row if isinstance(row, AgentOutcome) else AgentOutcome.model_validate(row)
        except ValidationError as e:
            report.rejected.append(RejectedOutcome(position=position, outcome_id=raw_id, reason=_explain(e)))
            continue
        if known_domains is not None and outcome.domain not in known_domains:
            report.rejected.append(
                RejectedOutcome(
                    position=position,
                    outcome_id=outcome.outcome_id,
                    reason=f"domain {outcome.domain!r} has no spec; known: {sorted(known_domains)}",
                )
            )
            continue
        if outcome.outcome_id in seen:
            report.rejected.append(
                RejectedOutcome(
                    position=position,
                    outcome_id=outcome.outcome_id,
                    reason="duplicate outcome_id in this batch",
                )
            )
            continue
        seen.add(outcome.outcome_id)
        valid.append(outcome)
    if not valid:
        return report
    with warehouse.duckdb() as conn:
        _ensure_table(conn)
        existing = {
            r[0]
            for r in conn.execute(
                f"SELECT outcome_id FROM {OUTCOMES_TABLE} WHERE outcome_id IN (SELECT unnest(?))",
                [[o.outcome_id for o in valid]],
            ).fetchall()
        }
        fresh = []
        for o in valid:
            if o.outcome_id in existing:
                report.rejected.append(
                    RejectedOutcome(
                        position=-1, outcome_id=o.outcome_id, reason="outcome_id already recorded"
                    )
                )
            else:
                fresh.append(o)
        if fresh:
            table = pa.Table.from_pylist(
                [o.model_dump() for o in fresh],
                schema=pa.schema(
                    [
                        ("outcome_id", pa.string()),
                        ("domain", pa.string()),
                        ("cell_id", pa.string()),
                        ("tags", pa.list_(pa.string())),
                        ("success", pa.bool_()),
                        ("recorded_at", pa.timestamp("us", tz="UTC")),
                        ("agent", pa.string()),
                    ]
                ),
            )
            conn.register("new_outcomes", table)
            conn.execute(f"INSERT INTO {OUTCOMES_TABLE} BY NAME SELECT * FROM new_outcomes")
            conn.unregister("new_outcomes")
        report.accepted = len(fresh)
    return report


def ingest_inbox(
    warehouse: Warehouse, *, known_domains: set[str] | None = None, inbox: StoragePath | None = None
) -> dict[str, IngestReport]:
    """Record every ``*.jsonl``/``*.parquet`` in the inbox, then move it to ``processed/`` (with a
    ``.rejected.json`` report beside it when rows were refused), so no file is ingested twice."""
    folder = fresh_listing(inbox or warehouse.root / INBOX)
    reports: dict[str, IngestReport] = {}
    if not folder.is_dir():
        return reports
    done = folder / "processed"
    for path in sorted([*folder.glob("*.jsonl"), *folder.glob("*.parquet")]):
        try:
            rows = read_rows_file(path)
        except Exception as e:  # a corrupt Parquet file: report it, keep it out of the inbox
            rows = []
            reports[path.name] = IngestReport(
                rejected=[RejectedOutcome(position=0, outcome_id=None, reason=f"unreadable file: {e}")]
            )
        else:
            reports[path.name] = record_outcomes(warehouse, rows, known_domains=known_domains)
        if reports[path.name].rejected:
            atomic_write_text(
                done / f"{path.name}.rejected.json",
                json.dumps([r.model_dump() for r in reports[path.name].rejected], indent=2),
            )
        move_file(path, done / path.name)
    return reports


PERFORMANCE_TABLE = "agent_performance"
PERFORMANCE_COLUMNS = {
    "domain": "VARCHAR",
    "source": "VARCHAR",
    "score": "DOUBLE",
    "n": "BIGINT",
    "metric": "VARCHAR",
    "run_id": "VARCHAR",
    "recorded_at": "TIMESTAMP",
    "ci_low": "DOUBLE",
    "ci_high": "DOUBLE",
    "parse_failures": "BIGINT",
}


def record_performance(warehouse: Warehouse, row: dict[str, Any]) -> None:
    """Append one measured score to ``agent_performance`` (the feedback loop's table): a compiled
    program's held-out score counts as agent success. Older tables gain the newer columns."""
    with warehouse.duckdb() as conn:
        columns = ", ".join(f"{name} {kind}" for name, kind in PERFORMANCE_COLUMNS.items())
        conn.execute(f"CREATE TABLE IF NOT EXISTS {PERFORMANCE_TABLE} ({columns})")
        for name, kind in PERFORMANCE_COLUMNS.items():
            conn.execute(f"ALTER TABLE {PERFORMANCE_TABLE} ADD COLUMN IF NOT EXISTS {name} {kind}")
        names = [n for n in PERFORMANCE_COLUMNS if n in row]
        conn.execute(
            f"INSERT INTO {PERFORMANCE_TABLE} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            [row[n] for n in names],
        )


class SuccessRate(BaseModel):
    domain: str
    rate: float | None
    n: int
    per_cell: dict[str, tuple[float, int]] = Field(default_factory=dict)
    program_score: float | None = None


def rolling_success(
    warehouse: Warehouse, *, window: timedelta, now: datetime | None = None, program_weight: int = 5
) -> dict[str, SuccessRate]:
    """Success per domain (and per cell) over the window.

    The latest ``compiled_program`` held-out score in the window counts as ``program_weight``
    outcomes with that success probability: a fresh program is one more data point.
    """
    now = now or datetime.now(UTC)
    since = now - window
    if not warehouse.duckdb_path.exists():
        return {}
    with warehouse.duckdb() as conn:
        _ensure_table(conn)
        per_domain = conn.execute(
            f"SELECT domain, sum(success::INT), count(*) FROM {OUTCOMES_TABLE} "
            "WHERE recorded_at >= ? GROUP BY domain",
            [since],
        ).fetchall()
        per_cell = conn.execute(
            f"SELECT domain, cell_id, avg(success::INT), count(*) FROM {OUTCOMES_TABLE} "
            "WHERE recorded_at >= ? AND cell_id IS NOT NULL GROUP BY domain, cell_id",
            [since],
        ).fetchall()
        has_perf = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'agent_performance'"
        ).fetchone()
        program: list[tuple[Any, ...]] = []
        if has_perf and has_perf[0]:
            program = conn.execute(
                "SELECT domain, arg_max(score, recorded_at) FROM agent_performance "
                "WHERE source = 'compiled_program' AND recorded_at >= ? GROUP BY domain",
                [since.replace(tzinfo=None)],
            ).fetchall()
    out: dict[str, SuccessRate] = {}
    program_scores = {d: float(s) for d, s in program}
    for domain, successes, n in per_domain:
        out[domain] = SuccessRate(domain=domain, rate=None, n=int(n))
        out[domain].rate = float(successes) / int(n)
    for domain, score in program_scores.items():
        base = out.setdefault(domain, SuccessRate(domain=domain, rate=None, n=0))
        successes = (base.rate or 0.0) * base.n + score * program_weight
        base.n += program_weight
        base.rate = successes / base.n
        base.program_score = score
    for domain, cell, rate, n in per_cell:
        if domain in out:
            out[domain].per_cell[str(cell)] = (float(rate), int(n))
    return out
