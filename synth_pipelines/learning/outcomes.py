"""Agent outcomes: how agents that use a domain's data fare. They close the feedback loop.

Outcomes arrive three ways — :func:`record_outcomes` (Python), ``synth record-outcome`` (CLI) and
JSONL/Parquet files dropped in the inbox folder (:func:`ingest_inbox`, run by the sensor) — and land
in the append-only Parquet dataset ``agent_outcomes/domain=<d>/`` under the warehouse root, mirrored
to the DuckDB table ``agent_outcomes``. Bad rows (unsafe or unknown domain, missing fields,
duplicate ids) are rejected with a reason; the good rows of the same batch are kept.

The Parquet is the record; DuckDB is a mirror for SQL users and dbt. Whatever only *reads*
(:func:`rolling_success`, so the sensor; ``synth status``) reads the Parquet and never takes the
DuckDB file's lock, so a reader can never lock out a writer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
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
PERFORMANCE_TABLE = "agent_performance"
INBOX = "outcomes_inbox"
OUTCOME_SCHEMA = pa.schema(
    [
        ("outcome_id", pa.string()),
        ("domain", pa.string()),
        ("cell_id", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("success", pa.bool_()),
        ("recorded_at", pa.timestamp("us", tz="UTC")),
        ("agent", pa.string()),
    ]
)
PERFORMANCE_SCHEMA = pa.schema(
    [
        ("domain", pa.string()),
        ("source", pa.string()),
        ("score", pa.float64()),
        ("n", pa.int64()),
        ("metric", pa.string()),
        ("run_id", pa.string()),
        ("recorded_at", pa.timestamp("us")),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("parse_failures", pa.int64()),
    ]
)


# How far ahead of this machine's clock a reported time may be (agents' clocks drift a little).
MAX_CLOCK_SKEW = timedelta(minutes=5)


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
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        # An outcome from the future would sit inside every rolling window until that time came.
        if aware > datetime.now(UTC) + MAX_CLOCK_SKEW:
            raise ValueError(
                f"is {aware.isoformat()}, more than {int(MAX_CLOCK_SKEW.total_seconds() // 60)} minutes "
                "in the future: send the time the task ended (UTC), or leave it out to use now"
            )
        return aware


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


def _adopt_legacy(warehouse: Warehouse, name: str) -> None:
    """Warehouses written before the Parquet record kept outcomes and scores only in DuckDB: copy
    them to Parquet once (read-only access), so that nothing recorded earlier is lost."""
    if warehouse.read_dataset(name, columns=["domain"]) is not None or not warehouse.duckdb_path.is_file():
        return
    import duckdb

    try:
        conn = duckdb.connect(str(warehouse.duckdb_path), read_only=True)
    except duckdb.Error:
        return  # locked by a writer right now: adopted on a later call
    try:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchall()  # fetched to the end: DuckDB refuses the next query on an unfinished result
        if not tables:
            return
        legacy: pa.Table = conn.execute(f"SELECT * FROM {name}").to_arrow_table()
    finally:
        conn.close()
    schema = OUTCOME_SCHEMA if name == OUTCOMES_TABLE else PERFORMANCE_SCHEMA
    for domain in sorted(set(legacy.column("domain").to_pylist())):
        rows = legacy.filter(pc.equal(legacy.column("domain"), domain))
        columns = {
            f.name: rows.column(f.name) if f.name in rows.column_names else pa.nulls(rows.num_rows)
            for f in schema
        }
        warehouse.append_dataset(name, domain, pa.table(columns).cast(schema))


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
    positions: list[int] = []  # each valid outcome's position in the request, for its rejection
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
        positions.append(position)
    if not valid:
        return report
    _adopt_legacy(warehouse, OUTCOMES_TABLE)
    recorded = warehouse.read_dataset(OUTCOMES_TABLE, columns=["outcome_id"])
    existing = set(recorded.column("outcome_id").to_pylist()) if recorded is not None else set()
    fresh = []
    for position, o in zip(positions, valid, strict=True):
        if o.outcome_id in existing:
            report.rejected.append(
                RejectedOutcome(
                    position=position, outcome_id=o.outcome_id, reason="outcome_id already recorded"
                )
            )
        else:
            fresh.append(o)
    by_domain: dict[str, list[AgentOutcome]] = {}
    for o in fresh:
        by_domain.setdefault(o.domain, []).append(o)
    for domain, outcomes in by_domain.items():
        table = pa.Table.from_pylist([o.model_dump() for o in outcomes], schema=OUTCOME_SCHEMA)
        warehouse.append_dataset(OUTCOMES_TABLE, domain, table)
    report.accepted = len(fresh)
    if fresh:
        # Recorded in Parquet now; the mirror follows (and heals itself on the next write if not).
        warehouse.sync_mirror(OUTCOMES_TABLE, by_domain)
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
    """Append one measured score to ``agent_performance`` (Parquet record + DuckDB mirror): a compiled
    program's held-out score counts as agent success in the feedback loop."""
    _adopt_legacy(warehouse, PERFORMANCE_TABLE)
    table = pa.Table.from_pylist(
        [{k: row.get(k) for k in PERFORMANCE_SCHEMA.names}], schema=PERFORMANCE_SCHEMA
    )
    warehouse.append_dataset(PERFORMANCE_TABLE, row["domain"], table)
    warehouse.sync_mirror(PERFORMANCE_TABLE, [row["domain"]])


class SuccessRate(BaseModel):
    domain: str
    rate: float | None
    n: int
    per_cell: dict[str, tuple[float, int]] = Field(default_factory=dict)
    program_score: float | None = None


def rolling_success(
    warehouse: Warehouse,
    *,
    windows: dict[str, timedelta],
    now: datetime | None = None,
    program_weight: int = 5,
) -> dict[str, SuccessRate]:
    """Success per domain (and per cell), each domain over its own window (its spec's
    ``feedback.window_hours``). Reads the Parquet record only: never the DuckDB file's lock.

    The latest ``compiled_program`` held-out score in the window counts as ``program_weight``
    outcomes with that success probability: a fresh program is one more data point.
    """
    import duckdb

    now = now or datetime.now(UTC)
    outcomes = warehouse.read_dataset(OUTCOMES_TABLE, columns=["domain", "cell_id", "success", "recorded_at"])
    performance = warehouse.read_dataset(
        PERFORMANCE_TABLE, columns=["domain", "source", "score", "recorded_at"]
    )
    since = pa.table(
        {
            "domain": pa.array(list(windows), pa.string()),
            "since": pa.array([now - w for w in windows.values()], pa.timestamp("us", tz="UTC")),
        }
    )
    conn = duckdb.connect()
    try:
        conn.execute("SET TimeZone = 'UTC'")
        conn.register("since", since)
        per_domain: list[tuple[Any, ...]] = []
        per_cell: list[tuple[Any, ...]] = []
        if outcomes is not None:
            conn.register("outcomes", outcomes)
            recent = "FROM outcomes o JOIN since w USING (domain) WHERE o.recorded_at >= w.since"
            per_domain = conn.execute(
                f"SELECT domain, sum(success::INT), count(*) {recent} GROUP BY domain"
            ).fetchall()
            per_cell = conn.execute(
                f"SELECT domain, cell_id, avg(success::INT), count(*) {recent} AND cell_id IS NOT NULL "
                "GROUP BY domain, cell_id"
            ).fetchall()
        program: list[tuple[Any, ...]] = []
        if performance is not None:
            conn.register("performance", performance)
            program = conn.execute(
                "SELECT domain, arg_max(score, recorded_at) FROM performance p JOIN since w USING (domain) "
                "WHERE p.source = 'compiled_program' AND p.recorded_at >= w.since::TIMESTAMP GROUP BY domain"
            ).fetchall()
    finally:
        conn.close()
    out: dict[str, SuccessRate] = {}
    for domain, successes, n in per_domain:
        out[domain] = SuccessRate(domain=domain, rate=float(successes) / int(n), n=int(n))
    for domain, score in program:
        base = out.setdefault(domain, SuccessRate(domain=domain, rate=None, n=0))
        successes = (base.rate or 0.0) * base.n + float(score) * program_weight
        base.n += program_weight
        base.rate = successes / base.n
        base.program_score = float(score)
    for domain, cell, rate, n in per_cell:
        if domain in out:
            out[domain].per_cell[str(cell)] = (float(rate), int(n))
    return out
