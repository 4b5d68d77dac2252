"""Per-domain status from the warehouse's DuckDB tables (``synth status``)."""

from __future__ import annotations

from typing import Any

from synth_pipelines.warehouse.storage import Warehouse


def _has(conn: Any, table: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchone()
    return bool(row and row[0])


def domain_status(wh: Warehouse) -> list[dict[str, Any]]:
    """One row per domain with generated/accepted counts, pass rate, diversity, program score, last run."""
    if not wh.duckdb_path.exists():
        return []
    with wh.duckdb() as conn:
        if not _has(conn, "raw_generations"):
            return []
        generated = dict(conn.execute("SELECT domain, count(*) FROM raw_generations GROUP BY 1").fetchall())
        accepted: dict[str, int] = {}
        last: dict[str, Any] = {}
        if _has(conn, "validated_examples"):
            for d, n, ts in conn.execute(
                "SELECT domain, count(*), max(validated_at) FROM validated_examples GROUP BY 1"
            ).fetchall():
                accepted[d], last[d] = n, ts
        program: dict[str, float] = {}
        if _has(conn, "agent_performance"):
            program = dict(
                conn.execute(
                    "SELECT domain, arg_max(score, recorded_at) FROM agent_performance "
                    "WHERE source = 'compiled_program' GROUP BY 1"
                ).fetchall()
            )
    rows = []
    for domain in sorted(generated):
        diversity = wh.diversity_stats(domain)
        rows.append(
            {
                "domain": domain,
                "generated": int(generated[domain]),
                "accepted": int(accepted.get(domain, 0)),
                "pass_rate": accepted.get(domain, 0) / generated[domain] if generated[domain] else None,
                "diversity": diversity.get("mean_pairwise_cosine_distance"),
                "program_score": program.get(domain),
                "last_run": last.get(domain),
            }
        )
    return rows
