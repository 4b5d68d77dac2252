"""Helpers the asset modules share: loading the materialized spec, metadata formatting, failures."""

import json
import time
from collections.abc import Collection, Sequence
from typing import Any

import dagster as dg

from synth_pipelines.llm.types import UsageTotals
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.warehouse.heap import release_freed_memory
from synth_pipelines.warehouse.storage import SPEC_FILE, Warehouse
from synth_pipelines.warehouse.usage import UsageRecord, planned_for, record_usage, saved_plan, usage_history

# One group for the whole per-domain chain (and its spec file): the job page then shows the chain
# itself instead of group boxes a newcomer has to expand.
PIPELINE_GROUP = "pipeline"


def load_materialized_spec(warehouse: Warehouse, domain: str) -> DomainSpec:
    """The spec as ``domain_schema`` last validated it (downstream assets never re-read the YAML)."""
    spec = warehouse.materialized_spec(domain)
    if spec is None:
        raise dg.Failure(
            description=f"domain_schema has not been materialized for {domain!r} (no "
            f"{warehouse.file(SPEC_FILE, domain)}). Materialize domain_schema for this partition first."
        )
    return spec


def require_upstream(
    warehouse: Warehouse,
    asset: str,
    domain: str,
    *,
    columns: list[str] | None = None,
    skip: Collection[str] = (),
) -> Any:
    """The upstream partition, read after the heap the previous steps freed went back to the OS
    (every asset past the first starts here; see ``warehouse/heap.py``). ``columns`` / ``skip``:
    read only these, or all but those (at 100,000 rows a column a step does not use is hundreds
    of MB it need not hold)."""
    release_freed_memory()
    table = warehouse.read_partition(asset, domain, columns=columns, skip=skip)
    if table is None:
        raise dg.Failure(
            description=f"{asset} has no data for domain {domain!r} under {warehouse.root}. "
            f"Materialize {asset} for this partition first."
        )
    return table


def _cell(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, limit: int = 5, width: int = 60
) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("_no rows_")
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "\n".join("| " + " | ".join(_cell(r.get(c), width) for c in columns) + " |" for r in rows[:limit])
    return dg.MetadataValue.md(head + body)


def histogram_markdown(
    values: Sequence[float], *, bins: int = 10, lo: float = 0.0, hi: float = 1.0
) -> dg.MetadataValue:
    """A text histogram that renders in the UI's Markdown metadata."""
    if not values:
        return dg.MetadataValue.md("_no values_")
    counts = [0] * bins
    for v in values:
        i = min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))
        counts[i] += 1
    peak = max(counts)
    lines = ["| range | count | |", "|---|---|---|"]
    for i, c in enumerate(counts):
        a, b = lo + (hi - lo) * i / bins, lo + (hi - lo) * (i + 1) / bins
        lines.append(f"| {a:.1f}–{b:.1f} | {c} | {'█' * round(20 * c / peak) if peak else ''} |")
    return dg.MetadataValue.md("\n".join(lines))


def usage_metadata(totals: UsageTotals) -> dict[str, Any]:
    per_model = [
        {"model": m, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in stats.items()}}
        for m, stats in sorted(totals.per_model.items())
    ]
    return {
        "llm_calls": totals.calls,
        "model_calls": totals.model_calls,
        "endpoint_check_calls": totals.probe_calls,
        "cache_hits": totals.cache_hits,
        "billed_tokens": totals.billed_tokens,
        "failed_calls": totals.failures,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "total_tokens": totals.prompt_tokens + totals.completion_tokens,
        "cost_usd": dg.MetadataValue.float(round(totals.cost_usd, 6)),
        "llm_latency_s": dg.MetadataValue.float(round(totals.latency_s, 3)),
        "models_used": dg.MetadataValue.text(", ".join(sorted(totals.per_model)) or "none"),
        # How each model received the schema: what auto settled on against each endpoint.
        "structured_output": dg.MetadataValue.json(dict(sorted(totals.structured_output.items()))),
        # Per model, its calls and tokens (cache hits included): what a cold run would pay for.
        "usage_per_model": dg.MetadataValue.json(
            {m: {k: round(v, 6) for k, v in stats.items()} for m, stats in sorted(totals.per_model.items())}
        ),
        "usage_by_model": markdown_table(
            per_model,
            [
                "model",
                "calls",
                "model_calls",
                "cache_hits",
                "prompt_tokens",
                "completion_tokens",
                "cost_usd",
                "latency_s",
            ],
            limit=50,
        ),
    }


def provider_failure(context_msg: str, error: BaseException) -> dg.Failure:
    """Wrap a provider error into an actionable Failure (the message never holds a key)."""
    return dg.Failure(description=f"{context_msg}: {error}")


def record_spend(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    warehouse: Warehouse,
    totals: UsageTotals,
    *,
    units: int,
    started: float,
    fresh_units: int | None = None,
    concurrency: int = 1,
) -> dict[str, Any]:
    """Append the asset's spend to ``llm_usage`` (the history ``synth plan`` calibrates on) and
    return its usage metadata, with planned vs actual when a plan was saved for this run.
    ``started`` is the asset's ``time.monotonic()`` at its start; ``fresh_units`` defaults to the
    structured calls the cache did not answer."""
    domain = context.partition_key
    asset = context.asset_key.path[-1]
    history = usage_history(warehouse, domain, last=1).get(asset, [])
    line = planned_for(saved_plan(warehouse, domain), asset, history[0].recorded_at if history else None)
    record = UsageRecord(
        domain=domain,
        asset=asset,
        run_id=context.run_id,
        units=units,
        fresh_units=fresh_units if fresh_units is not None else max(0, totals.calls - totals.cache_hits),
        model_calls=totals.model_calls,
        probe_calls=totals.probe_calls,
        cache_hits=totals.cache_hits,
        failed_calls=totals.failures,
        prompt_tokens=totals.prompt_tokens,
        completion_tokens=totals.completion_tokens,
        billed_tokens=totals.billed_tokens,
        cost_usd=totals.cost_usd,
        latency_s=totals.latency_s,
        wall_s=round(time.monotonic() - started, 3),
        concurrency=concurrency,
        calls_by_model=json.dumps({m: int(st["model_calls"]) for m, st in sorted(totals.per_model.items())}),
        planned_calls=line["calls"] if line else None,
        planned_tokens=(line["prompt_tokens"] + line["completion_tokens"]) if line else None,
        planned_cost_usd=line["cost_usd"] if line else None,
    )
    record_usage(warehouse, record)
    meta = usage_metadata(totals)
    if line:
        meta.update(
            {
                "planned_model_calls": int(line["calls"]),
                "planned_cost_usd": dg.MetadataValue.float(round(float(line["cost_usd"]), 6)),
                "planned_tokens": int(line["prompt_tokens"] + line["completion_tokens"]),
                "plan_calls_error_pct": dg.MetadataValue.float(_error_pct(line["calls"], totals.model_calls)),
                "plan_cost_error_pct": dg.MetadataValue.float(_error_pct(line["cost_usd"], totals.cost_usd)),
                "plan_tokens_error_pct": dg.MetadataValue.float(
                    _error_pct(line["prompt_tokens"] + line["completion_tokens"], totals.billed_tokens)
                ),
            }
        )
    return meta


def _error_pct(planned: float, actual: float) -> float:
    """How far the plan was from the run, as a percentage of the actual (0 when both are 0)."""
    if actual == 0:
        return 0.0 if planned == 0 else 100.0
    return round(100.0 * (planned - actual) / actual, 2)
