"""Per-domain status of a warehouse (``synth status``), read from the Parquet datasets alone.

A status check is a reader: it never opens the DuckDB mirror, so it can neither wait on a writer nor
make one wait.
"""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc

from synth_pipelines.warehouse.storage import QUALITY_FILE, Warehouse

PERFORMANCE = "agent_performance"


def domain_status(wh: Warehouse) -> list[dict[str, Any]]:
    """One row per domain with generated/accepted counts, pass rate, diversity, program score, last run."""
    scores = _latest_program_scores(wh)
    rows = []
    for domain in wh.partition_domains("raw_generations"):
        generated = wh.partition_rows("raw_generations", domain) or 0
        validated = wh.read_partition("validated_examples", domain, columns=["validated_at"])
        accepted = validated.num_rows if validated is not None else 0
        last = (
            pc.max(validated.column("validated_at")).as_py() if validated is not None and accepted else None
        )
        diversity = wh.diversity_stats(domain)
        rows.append(
            {
                "domain": domain,
                "generated": generated,
                "accepted": accepted,
                "pass_rate": accepted / generated if generated else None,
                "diversity": diversity.get("mean_pairwise_cosine_distance"),
                "program_score": scores.get(domain),
                "last_run": last,
            }
        )
    # Timeseries and events domains: their rows are generated and kept as they are (no judging);
    # the recovery check's verdict stands in for a pass rate.
    for domain in wh.partition_domains("statistical_data"):
        made = wh.partition_rows("statistical_data", domain) or 0
        quality = wh.read_json(QUALITY_FILE.format(domain=domain)) or {}
        rows.append(
            {
                "domain": domain,
                "generated": made,
                "accepted": made if quality.get("passed") else 0,
                "pass_rate": (1.0 if quality.get("passed") else 0.0) if quality else None,
                "diversity": None,
                "program_score": None,
                "last_run": None,
            }
        )
    return sorted(rows, key=lambda r: r["domain"])


def _latest_program_scores(wh: Warehouse) -> dict[str, float]:
    table = wh.read_dataset(PERFORMANCE, columns=["domain", "source", "score", "recorded_at"])
    if table is None:
        return {}
    programs = table.filter(pc.equal(table.column("source"), "compiled_program"))
    latest: dict[str, tuple[Any, float]] = {}
    for domain, score, at in zip(
        programs.column("domain").to_pylist(),
        programs.column("score").to_pylist(),
        programs.column("recorded_at").to_pylist(),
        strict=True,
    ):
        if domain not in latest or at >= latest[domain][0]:
            latest[domain] = (at, float(score))
    return {d: s for d, (_, s) in latest.items()}
