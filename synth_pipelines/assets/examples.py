"""Generation and validation: ``raw_generations`` and ``validated_examples``."""

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from synth_pipelines.assets._common import (
    histogram_markdown,
    load_materialized_spec,
    markdown_table,
    provider_failure,
    require_upstream,
    usage_metadata,
)
from synth_pipelines.assets.domain import problem_matrix
from synth_pipelines.generation.examples import Journal, generate_examples, plan_items
from synth_pipelines.generation.matrix import MatrixCell
from synth_pipelines.generation.seeds import SeedProblem
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import LLMResource, WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL
from synth_pipelines.spec.text import example_text
from synth_pipelines.validation.consensus import judge_example, resolve_judges
from synth_pipelines.validation.dedup import near_duplicate_selection
from synth_pipelines.validation.rules import dedup_key, example_json_text, rule_check
from synth_pipelines.warehouse.tables import RAW_GENERATIONS, REJECTED_EXAMPLES, VALIDATED_EXAMPLES, to_table

GROUP = "synthesis"


class GenerationConfig(dg.Config):
    temperature: float | None = Field(default=None, ge=0, le=2, description="Override the spec's hint.")


@dg.asset(
    partitions_def=domain_partitions,
    pool=LLM_POOL,
    group_name=GROUP,
    deps=[problem_matrix],
    kinds={"parquet", "duckdb"},
)
def raw_generations(
    context: dg.AssetExecutionContext,
    config: GenerationConfig,
    warehouse: WarehouseResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    """Every generated example with full provenance (grain: one row per planned item of the matrix).

    Rows hold the example JSON or the failure reason, plus cell, seed, generator model, prompt
    hash, temperature, sampling seed, tokens, cost, latency, attempts and time. Items are journaled
    as they finish, so a killed run resumes without calling the model again for finished items.
    """
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    cells = [
        MatrixCell(**{**r, "conditions": json.loads(r.pop("conditions_json"))})
        for r in require_upstream(wh, "problem_matrix", domain).to_pylist()
    ]
    seeds = [SeedProblem(**r) for r in require_upstream(wh, "seed_problems", domain).to_pylist()]
    items = plan_items(cells, seeds, domain)
    client = llm.client(wh.cache_path)
    journal = Journal(wh.journal_path("raw_generations", domain))
    context.log.info(
        f"generating {len(items)} examples for {domain} with {client.generator_chain()} "
        f"({client.strategy} routing)"
    )
    try:
        outcome = generate_examples(spec, items, client, journal, temperature=config.temperature)
    except (ProviderError, ProviderConfigError) as e:
        raise provider_failure(
            f"generating examples for {domain!r} (finished items are kept; rerun resumes)", e
        ) from e
    rows = [r.model_dump() for r in outcome.rows]
    table = to_table(rows, RAW_GENERATIONS)
    path = wh.write_partition("raw_generations", domain, table)
    wh.replace_domain_rows("raw_generations", domain, table)
    if outcome.stopped_reason is None:
        journal.remove()  # the partition now holds every row; the journal only matters mid-run
    else:
        context.log.warning(f"stopped early: {outcome.stopped_reason}; {len(rows)}/{len(items)} items kept")
    ok = [r for r in rows if r["status"] == "ok"]
    errors = Counter((r["error"] or "")[:80] for r in rows if r["status"] != "ok")
    return dg.MaterializeResult(
        metadata={
            "rows": len(rows),
            "planned": len(items),
            "ok": len(ok),
            "failed": len(rows) - len(ok),
            "resumed_from_journal": outcome.resumed,
            "stopped_reason": outcome.stopped_reason or "",
            "failure_reasons": dg.MetadataValue.json(dict(errors.most_common(10))),
            "path": dg.MetadataValue.path(str(path)),
            **usage_metadata(client.totals),
            "preview": markdown_table(
                ok, ["example_id", "cell_id", "generator_model", "example_json"], limit=5, width=120
            ),
        }
    )


class ValidationConfig(dg.Config):
    early_stop: bool = Field(default=True, description="Skip remaining judges once the outcome is decided.")


def _judged_fields(c: Any, threshold: float, spec_version: str) -> dict[str, Any]:
    return {
        "consensus": c.consensus if c is not None else None,
        "consensus_threshold": threshold,
        "validator_spread": c.spread if c is not None else None,
        "validator_scores": [
            {
                "model": j.model,
                "weight": j.weight,
                "score": j.score,
                "criteria_json": json.dumps(j.scores),
                "reason": j.reason,
                "error": j.error,
            }
            for j in (c.judges if c is not None else [])
        ],
        "validators_skipped": c.skipped_calls if c is not None else 0,
        "spec_version": spec_version,
        "validated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@dg.asset(
    partitions_def=domain_partitions,
    pool=LLM_POOL,
    group_name=GROUP,
    deps=[raw_generations],
    kinds={"parquet", "duckdb"},
)
def validated_examples(
    context: dg.AssetExecutionContext,
    config: ValidationConfig,
    warehouse: WarehouseResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    """Examples that passed every gate (grain: one row per accepted example).

    Gates, in order: rule-based schema compliance and degenerate-text checks, exact-duplicate
    removal on the spec's uniqueness fields, then multi-model validation (weighted consensus of
    the validator models against the spec's threshold). Accepted rows keep their provenance and
    per-validator scores; rejected rows land in ``rejected_examples`` with stage and reasons.
    Also written to the DuckDB tables ``validated_examples`` and ``rejected_examples``.
    """
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    raw = require_upstream(wh, "raw_generations", domain).to_pylist()
    client = llm.client(wh.cache_path)
    try:
        judges = resolve_judges(spec, client)
    except ValueError as e:
        raise dg.Failure(description=str(e)) from e
    threshold = spec.validation.consensus_threshold
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen_keys: dict[str, str] = {}
    candidates: list[tuple[dict[str, Any], dict[str, Any], str]] = []

    def reject(
        row: dict[str, Any],
        stage: str,
        reasons: list[str],
        consensus: Any = None,
        key: str | None = None,
        example: dict[str, Any] | None = None,
    ) -> None:
        base = {k: row[k] for k in VALIDATED_EXAMPLES.names if k in row}
        rejected.append(
            {
                **base,
                **_judged_fields(consensus, threshold, spec.version_str),
                "example_json": example_json_text(example) if example else row.get("example_json"),
                "dedup_key": key,
                "fail_stage": stage,
                "fail_reasons": reasons,
            }
        )

    for row in raw:
        if row["status"] != "ok":
            reject(row, "generation", [row["error"] or "generation failed"])
            continue
        example, reasons = rule_check(spec, row["example_json"], prompt_text=row["problem"])
        if example is None or reasons:
            reject(row, "rules", reasons, example=example)
            continue
        key = dedup_key(spec, example)
        if key in seen_keys:
            reject(row, "dedup", [f"exact duplicate of {seen_keys[key]}"], key=key, example=example)
            continue
        seen_keys[key] = row["example_id"]
        candidates.append((row, example, key))

    def judge(candidate: tuple[dict[str, Any], dict[str, Any], str]) -> Any:
        row, example, _ = candidate
        return judge_example(
            client,
            spec,
            judges,
            example_id=row["example_id"],
            problem=row["problem"],
            example=example,
            early_stop=config.early_stop,
        )

    context.log.info(f"{len(candidates)} of {len(raw)} examples reach the {len(judges)} validator models")
    try:
        verdicts = client.map(judge, candidates, concurrency=client.concurrency_for(j.model for j in judges))
    except (ProviderError, ProviderConfigError) as e:
        raise provider_failure(f"validating examples for {domain!r}", e) from e
    for (row, example, key), verdict in zip(candidates, verdicts, strict=True):
        if not verdict.passed:
            reject(row, "consensus", [verdict.reason or "below threshold"], verdict, key, example)
            continue
        base = {k: row[k] for k in VALIDATED_EXAMPLES.names if k in row}
        accepted.append(
            {
                **base,
                **_judged_fields(verdict, threshold, spec.version_str),
                "example_json": example_json_text(example),
                "dedup_key": key,
            }
        )

    # Near duplicates among accepted examples collapse to their best-scored member.
    texts = [example_text(json.loads(r["example_json"]), spec.uniqueness_fields()) for r in accepted]
    keep, replaced_by = near_duplicate_selection(
        texts, [r["consensus"] or 0.0 for r in accepted], threshold=spec.validation.near_duplicate_threshold
    )
    for dropped, winner in replaced_by.items():
        row = accepted[dropped]
        accepted[winner].setdefault("replaced_example_ids", []).append(row["example_id"])
        rejected.append(
            {
                **row,
                "fail_stage": "near_duplicate",
                "fail_reasons": [f"near duplicate of {accepted[winner]['example_id']}"],
            }
        )
    accepted = [accepted[i] for i in keep]

    path = wh.write_partition("validated_examples", domain, to_table(accepted, VALIDATED_EXAMPLES))
    wh.write_partition("rejected_examples", domain, to_table(rejected, REJECTED_EXAMPLES))
    wh.replace_domain_rows("validated_examples", domain, to_table(accepted, VALIDATED_EXAMPLES))
    wh.replace_domain_rows("rejected_examples", domain, to_table(rejected, REJECTED_EXAMPLES))

    judged = len(candidates)
    consensus_values = [v.consensus for v in verdicts if v.consensus is not None]
    stage_counts = Counter(r["fail_stage"] for r in rejected)
    reason_counts = Counter(
        f"rules: {reason.split(':', 1)[-1].strip()}" if r["fail_stage"] == "rules" else r["fail_stage"]
        for r in rejected
        for reason in r["fail_reasons"]
    )
    return dg.MaterializeResult(
        metadata={
            "rows": len(accepted),
            "input_rows": len(raw),
            "rejected": len(rejected),
            "rejected_by_stage": dg.MetadataValue.json(dict(stage_counts)),
            "rejection_reasons": dg.MetadataValue.json(dict(reason_counts.most_common(15))),
            "rule_check_pass_rate": dg.MetadataValue.float(
                round(
                    1 - stage_counts.get("rules", 0) / max(1, len(raw) - stage_counts.get("generation", 0)), 4
                )
            ),
            "consensus_pass_rate": dg.MetadataValue.float(
                round(sum(v.passed for v in verdicts) / judged, 4) if judged else 0.0
            ),
            "near_duplicates_removed": len(replaced_by),
            "overall_pass_rate": dg.MetadataValue.float(round(len(accepted) / len(raw), 4) if raw else 0.0),
            "mean_consensus": dg.MetadataValue.float(
                round(sum(consensus_values) / len(consensus_values), 4) if consensus_values else 0.0
            ),
            "consensus_threshold": threshold,
            "validators": dg.MetadataValue.json([j.model_dump() for j in judges]),
            "validator_calls_skipped": sum(v.skipped_calls for v in verdicts),
            "consensus_histogram": histogram_markdown(consensus_values),
            "path": dg.MetadataValue.path(str(path)),
            **usage_metadata(client.totals),
            "preview": markdown_table(
                accepted, ["example_id", "consensus", "validator_spread", "example_json"], limit=5, width=120
            ),
            "rejected_preview": markdown_table(
                rejected, ["example_id", "fail_stage", "fail_reasons"], limit=8, width=100
            ),
        }
    )
