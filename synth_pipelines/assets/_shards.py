"""What the sharded assets (``raw_generations``, ``validated_examples``) share: a shard step's
report to its publishing step, and how the reports of several shards add up to one asset's."""

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel

from synth_pipelines.generation.generate_rows import GenerationShard
from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.types import UsageTotals

# The usage counters a client keeps that add up across shards.
_SUMMED_TOTALS = (
    "calls", "model_calls", "probe_calls", "billed_tokens", "cache_hits", "failures",
    "prompt_tokens", "completion_tokens", "cost_usd", "latency_s",
)  # fmt: skip


class ShardUsage(BaseModel):
    """What one shard's step spent and saw (a small value the IO manager hands to the publisher)."""

    shard: GenerationShard
    totals: dict[str, Any]
    concurrency: int
    gate_stats: dict[str, Any]
    prefetched: dict[str, Any]
    progress: dict[str, Any]


def shard_usage(client: LLMClient, models: Iterable[str], prefetch: Any, progress: Any) -> dict[str, Any]:
    """A shard step's :class:`ShardUsage` fields (all but ``shard``): its client's totals and
    gate figures, its concurrency for ``models``, its embedding prefetcher's and progress' figures."""
    return {
        "totals": asdict(client.totals),
        "concurrency": client.concurrency_for(models),
        "gate_stats": client.gate_stats(),
        "prefetched": prefetch.stats(),
        "progress": progress.metadata(),
    }


def split_budget(client: LLMClient, shard: GenerationShard) -> None:
    """Each shard spends its share of the run's budget: shards run at once, perhaps on other
    machines, with no ledger between them, so equal shares keep the sum within the budget."""
    if shard.of > 1 and client.budget_usd is not None:
        client.budget_usd = client.budget_usd / shard.of
    if shard.of > 1 and client.budget_tokens is not None:
        client.budget_tokens = client.budget_tokens // shard.of


def merged_totals(reports: list[Any]) -> UsageTotals:
    """The shards' usage as one client's would have been."""
    total = UsageTotals()
    for report in reports:
        part = report.totals
        for name in _SUMMED_TOTALS:
            setattr(total, name, getattr(total, name) + part[name])
        for model, figures in part["per_model"].items():
            into = total.per_model.setdefault(model, dict.fromkeys(figures, 0))
            for key, value in figures.items():
                into[key] = into.get(key, 0) + value
        total.structured_output.update(part["structured_output"])
    return total


def per_shard(reports: list[Any], field: str) -> dict[str, Any]:
    """One shard: its figures as they were; several: keyed by shard."""
    if len(reports) == 1:
        return dict(getattr(reports[0], field))
    return {r.shard.label: getattr(r, field) for r in reports}


def summed_progress(reports: list[Any]) -> dict[str, Any]:
    """The shards' progress metadata as one step's: rows add up, the wall time is the longest."""
    elapsed = max(r.progress.get("elapsed_s", 0.0) for r in reports)
    done = sum(r.progress.get("progress_rows", 0) for r in reports)
    return {
        "progress_rows": done,
        "progress_resumed_rows": sum(r.progress.get("progress_resumed_rows", 0) for r in reports),
        "rows_per_s": round(done / elapsed, 3) if elapsed else 0.0,
        "elapsed_s": elapsed,
    }


def longest_shard_s(reports: list[Any]) -> float:
    """The longest shard's wall seconds: shards may run in other processes, whose clocks are not
    the publisher's, so an asset's wall time is this plus its publishing step's."""
    return max(r.progress.get("elapsed_s", 0.0) for r in reports)
