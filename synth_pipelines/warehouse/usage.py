"""``llm_usage``: what each model-calling asset actually spent, one row per materialization.

It is the history that ``synth plan`` calibrates against (calls per item, tokens per call, latency),
and the record of how close a saved plan came to the run that followed it (``planned_*`` columns).
Append-only Parquet parts per domain, like ``agent_performance``; never read through DuckDB's lock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from synth_pipelines.warehouse.storage import Warehouse

USAGE_TABLE = "llm_usage"
PLAN_FILE = "plans/domain={domain}/plan.json"

LLM_USAGE = pa.schema(
    [
        ("domain", pa.string()),
        ("asset", pa.string()),
        ("run_id", pa.string()),
        ("recorded_at", pa.timestamp("us")),
        # The asset's work: items generated, rows judged, examples scored, derivations, seed rounds.
        ("units", pa.int64()),
        # The units that needed the model (not answered by the cache nor resumed).
        ("fresh_units", pa.int64()),
        ("model_calls", pa.int64()),
        ("probe_calls", pa.int64()),  # of model_calls: endpoint checks (not the asset's own work)
        ("cache_hits", pa.int64()),
        ("failed_calls", pa.int64()),
        ("prompt_tokens", pa.int64()),  # these two include the replies the cache served
        ("completion_tokens", pa.int64()),
        ("billed_tokens", pa.int64()),  # tokens of the calls a model answered
        ("cost_usd", pa.float64()),
        ("latency_s", pa.float64()),
        ("wall_s", pa.float64()),
        ("concurrency", pa.int64()),
        # JSON {model: calls the model answered}: how the calls split over a panel or a chain.
        ("calls_by_model", pa.string()),
        # From the plan saved before this run (synth plan / the synth_plan job), when there was one.
        ("planned_calls", pa.int64()),
        ("planned_tokens", pa.int64()),
        ("planned_cost_usd", pa.float64()),
    ]
)


class UsageRecord(BaseModel):
    """One asset's spend in one run (the row of ``llm_usage``)."""

    domain: str
    asset: str
    run_id: str = ""
    recorded_at: datetime | None = None
    units: int
    fresh_units: int
    model_calls: int
    probe_calls: int = 0
    cache_hits: int
    failed_calls: int = 0
    prompt_tokens: int
    completion_tokens: int
    billed_tokens: int = 0
    cost_usd: float
    latency_s: float
    wall_s: float
    concurrency: int = 1
    calls_by_model: str = "{}"
    planned_calls: int | None = None
    planned_tokens: int | None = None
    planned_cost_usd: float | None = None


def record_usage(warehouse: Warehouse, record: UsageRecord) -> None:
    """Append one asset's spend to ``llm_usage`` (the Parquet record; the DuckDB mirror follows)."""
    row = record.model_dump()
    row["recorded_at"] = (record.recorded_at or datetime.now(UTC)).replace(tzinfo=None)
    table = pa.Table.from_pylist([row], schema=LLM_USAGE)
    warehouse.append_dataset(USAGE_TABLE, record.domain, table)
    warehouse.sync_mirror(USAGE_TABLE, [record.domain])


def usage_history(warehouse: Warehouse, domain: str, *, last: int = 3) -> dict[str, list[UsageRecord]]:
    """Per asset, its ``last`` recorded runs for ``domain`` (newest first)."""
    table = warehouse.read_dataset(USAGE_TABLE, domain=domain)
    if table is None:
        return {}
    rows: list[dict[str, Any]] = table.to_pylist()
    out: dict[str, list[UsageRecord]] = {}
    for row in sorted(rows, key=lambda r: r["recorded_at"] or datetime.min, reverse=True):
        row["domain"] = domain
        kept = out.setdefault(row["asset"], [])
        if len(kept) < last:
            # A column added since a part was written reads as null there: the model's default.
            kept.append(UsageRecord.model_validate({k: v for k, v in row.items() if v is not None}))
    return out


def saved_plan(warehouse: Warehouse, domain: str) -> dict[str, Any] | None:
    """The plan ``synth plan`` last saved for ``domain`` (its JSON), or None."""
    found = warehouse.read_json(PLAN_FILE.format(domain=domain))
    return found if isinstance(found, dict) else None


def planned_for(plan: dict[str, Any] | None, asset: str, since: datetime | None) -> dict[str, Any] | None:
    """The saved plan's line for ``asset`` when the plan was made after ``since`` (the asset's last
    recorded run), i.e. for the run under way; None otherwise (a stale plan is not this run's)."""
    if not plan:
        return None
    created = datetime.fromisoformat(str(plan.get("created_at")))
    if since is not None and created.replace(tzinfo=None) <= since.replace(tzinfo=None):
        return None
    for line in plan.get("assets", []):
        if line.get("asset") == asset:
            return dict(line)
    return None
