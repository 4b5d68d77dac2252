"""Generation and validation: ``raw_generations`` and ``validated_examples``."""

import json
import time
from typing import Any

import dagster as dg
import duckdb
import pyarrow.compute as pc
from pydantic import Field

from synth_pipelines.assets._common import (
    histogram_markdown,
    load_materialized_spec,
    markdown_table,
    provider_failure,
    record_spend,
    require_upstream,
)
from synth_pipelines.assets.domain import problem_matrix
from synth_pipelines.generation.examples import generate_examples, iter_plan_items, plan_table
from synth_pipelines.generation.matrix import MatrixCell
from synth_pipelines.generation.seeds import SeedProblem
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL
from synth_pipelines.validation.consensus import resolve_judges
from synth_pipelines.validation.examples import ValidationOutcome, validate_examples
from synth_pipelines.validation.memory import load_memory
from synth_pipelines.warehouse.inflight import InflightRows, build_partition
from synth_pipelines.warehouse.progress import Progress
from synth_pipelines.warehouse.tables import (
    RAW_GENERATIONS,
)

GROUP = "synthesis"


class GenerationConfig(dg.Config):
    temperature: float | None = Field(default=None, ge=0, le=2, description="Override the spec's hint.")
    allow_partial: bool = Field(
        default=False,
        description="Publish the partition even when the run stopped short of the plan (budget) or "
        "too many items got no answer from the provider. Off: the previous partition stays.",
    )
    max_provider_failure_rate: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="The largest share of items that may end without an answer from the provider "
        "(HTTP errors, timeouts) before the run fails instead of publishing.",
    )


def _partition_summary(path: Any) -> dict[str, Any]:
    """Counts, top failure reasons and a preview of a raw_generations file, computed by DuckDB."""
    conn = duckdb.connect()
    try:
        source = f"read_parquet('{str(path).replace(chr(39), chr(39) * 2)}')"
        total, ok, provider = conn.execute(
            f"SELECT count(*), count(*) FILTER (status = 'ok'), "
            f"count(*) FILTER (status != 'ok' AND failure_kind = 'provider') FROM {source}"
        ).fetchone() or (0, 0, 0)
        errors = conn.execute(
            f"SELECT left(coalesce(error, ''), 240) AS e, count(*) AS n FROM {source} WHERE status != 'ok' "
            "GROUP BY e ORDER BY n DESC, e LIMIT 10"
        ).fetchall()
        cursor = conn.execute(
            f"SELECT example_id, cell_id, generator_model, example_json FROM {source} "
            "WHERE status = 'ok' LIMIT 5"
        )
        names = [d[0] for d in cursor.description or []]
        preview = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        conn.close()
    return {
        "rows": int(total),
        "ok": int(ok),
        "failed": int(total - ok),
        "provider_failed": int(provider),
        "failure_reasons": {e: int(n) for e, n in errors},
        "preview": preview,
    }


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

    Rows hold the example JSON or the failure reason and its kind, plus cell, seed, generator model,
    prompt hash, temperature, sampling seed, tokens, cost, latency, attempts and time. Rows are
    written as they finish (Parquet parts in the state folder), so a killed run resumes without
    calling the model again for finished items. The partition is published only when the plan is
    complete and the provider answered enough items; otherwise the previous partition stays and the
    run fails saying why (``allow_partial`` publishes anyway).
    """
    started = time.monotonic()
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    cells = [
        MatrixCell(**{**r, "conditions": json.loads(r.pop("conditions_json"))})
        for r in require_upstream(wh, "problem_matrix", domain).to_pylist()
    ]
    seeds = [SeedProblem(**r) for r in require_upstream(wh, "seed_problems", domain).to_pylist()]
    planned = sum(c.target for c in cells)
    plan = plan_table(spec, iter_plan_items(cells, seeds, domain))
    client = llm.client(wh.cache_path)
    sink = InflightRows(wh.inflight_dir("raw_generations", domain), RAW_GENERATIONS)
    progress = Progress(wh.progress_path(domain), asset="raw_generations", domain=domain, total=planned)
    context.log.info(
        f"generating {planned} examples for {domain} with {client.generator_chain()} "
        f"({client.strategy} routing); {len(sink.part_files())} in-flight part file(s) to resume from"
    )
    try:
        outcome = generate_examples(
            spec,
            iter_plan_items(cells, seeds, domain),
            client,
            sink,
            planned=planned,
            temperature=config.temperature,
            progress=progress,
        )
    except (ProviderError, ProviderConfigError) as e:
        raise provider_failure(
            f"generating examples for {domain!r} ({sink.written} new rows kept in the state folder; "
            "the previous partition is unchanged; a rerun resumes)",
            e,
        ) from e
    finally:
        progress.finish()
    staged = wh.staging_file("raw_generations", domain)
    rows = build_partition(sink.part_files(), plan, RAW_GENERATIONS, staged, temp_dir=wh.state_dir)
    summary = _partition_summary(staged)
    usage = record_spend(
        context,
        wh,
        client.totals,
        units=outcome.generated,
        fresh_units=outcome.fresh,
        started=started,
        concurrency=client.concurrency_for(client.generator_chain()),
    )
    meta: dict[str, Any] = {
        "rows": rows,
        "planned": planned,
        "ok": summary["ok"],
        "failed": summary["failed"],
        "provider_failed": summary["provider_failed"],
        "resumed": outcome.resumed,
        "generated_now": outcome.generated,
        "stopped_reason": outcome.stopped_reason or "",
        "failure_reasons": dg.MetadataValue.json(summary["failure_reasons"]),
        "adaptive_concurrency": dg.MetadataValue.json(client.gate_stats()),
        **progress.metadata(),
        **usage,
    }
    problems = []
    if rows < planned:
        problems.append(
            f"{planned - rows} of {planned} planned items have no row"
            + (f" ({outcome.stopped_reason})" if outcome.stopped_reason else "")
        )
    if rows and summary["provider_failed"] / rows > config.max_provider_failure_rate:
        top = next(iter(summary["failure_reasons"]), "")
        problems.append(
            f"{summary['provider_failed']} of {rows} items got no answer from the provider "
            f"(more than {config.max_provider_failure_rate:.0%}; most common: {top})"
        )
    if problems and not config.allow_partial:
        staged.unlink(missing_ok=True)
        raise dg.Failure(
            description=f"raw_generations for {domain!r} was not published: {'; '.join(problems)}. "
            "The previous partition is unchanged; finished items are kept in the state folder and a "
            "rerun resumes them (raise the budget or fix the provider first). Run config "
            "allow_partial: true publishes what there is.",
            metadata=meta,
        )
    # The DuckDB mirror first (from the staged file), then the atomic publish: if the mirror cannot
    # be updated the run fails with the published partition untouched, so the two never disagree.
    wh.replace_domain_rows("raw_generations", domain, staged)
    path = wh.publish_partition_file("raw_generations", domain, staged)
    sink.clear()  # the partition now holds every row; the parts only matter mid-run
    if problems:
        context.log.warning(f"published a partial partition (allow_partial): {'; '.join(problems)}")
    meta["path"] = dg.MetadataValue.path(str(path))
    meta["preview"] = markdown_table(
        summary["preview"], ["example_id", "cell_id", "generator_model", "example_json"], limit=5, width=120
    )
    return dg.MaterializeResult(metadata=meta)


class ValidationConfig(dg.Config):
    early_stop: bool = Field(default=True, description="Skip remaining judges once the outcome is decided.")


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
    embedder: EmbedderResource,
) -> dg.MaterializeResult:
    """Examples that passed every gate (grain: one row per accepted example).

    Gates, in order: rule-based schema compliance and degenerate-text checks, the spec's SQL rules,
    exact-duplicate removal on the spec's uniqueness fields, the on-topic gate (similarity of the
    example to its problem, when the profile's calibration turns it on), the cross-field agreement
    gate (two text fields of one example that talk about different things: ``inconsistent_fields``),
    then multi-model validation (weighted consensus of the validator models against the spec's
    threshold; skipped, and said so in the ``panel`` metadata, when the profile's calibration found
    the panel adds no agreement: rows are then accepted unjudged, consensus null), then
    near-duplicate removal, then the domain's memory: a new example within
    ``memory_duplicate_threshold`` cosine of one accepted in an earlier run is rejected
    (``memory_duplicate``). Accepted rows
    keep their provenance and per-validator scores; rejected rows land in ``rejected_examples``
    with stage and reasons (always written, even when nothing is accepted). Also written to the
    DuckDB tables ``validated_examples`` and ``rejected_examples``. When no judge could score
    anything because the validators' provider failed, the asset fails naming the cause and the
    previous ``validated_examples`` partition stays.
    """
    started = time.monotonic()
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    raw = require_upstream(wh, "raw_generations", domain)
    client = llm.client(wh.cache_path)
    try:
        judges = resolve_judges(spec, client)
    except ValueError as e:
        raise dg.Failure(description=str(e)) from e
    progress = Progress(
        wh.progress_path(domain), asset="validated_examples", domain=domain, total=raw.num_rows
    )
    try:
        outcome = validate_examples(
            spec,
            raw,
            client,
            judges,
            early_stop=config.early_stop,
            progress=progress,
            similarity=lambda problems, texts: embedder.similarity(
                problems, texts, cache_path=wh.embedding_cache_path
            ),
            memory=load_memory(wh, domain),
            embed=lambda texts: embedder.embed(texts, cache_path=wh.embedding_cache_path),
        )
    except (ProviderError, ProviderConfigError) as e:
        raise provider_failure(
            f"validating examples for {domain!r} (judge replies so far are cached; the previous "
            "partition is unchanged)",
            e,
        ) from e
    finally:
        progress.finish()
    # The rejected rows are always written: they say why nothing (or little) got through.
    wh.write_dataset("rejected_examples", domain, outcome.rejected)
    cause = outcome.all_judges_failed_on_provider()
    if cause is not None:
        raise dg.Failure(
            description=f"validated_examples for {domain!r}: all {len(outcome.judge_calls)} judge calls "
            f"failed ({cause}). Nothing could be scored, so the previous partition is unchanged; "
            "rejected_examples holds this run's rows. Fix the validator models' provider and rerun.",
        )
    path = wh.write_dataset("validated_examples", domain, outcome.accepted)
    return dg.MaterializeResult(
        metadata={
            **_validation_metadata(
                spec, raw.num_rows, outcome, judges, wh.threshold_source(domain, "panel") or ""
            ),
            "adaptive_concurrency": dg.MetadataValue.json(client.gate_stats()),
            "path": dg.MetadataValue.path(str(path)),
            **progress.metadata(),
            # Units: raw rows; fresh: rows generated by a model call (their judge calls are new too).
            **record_spend(
                context,
                wh,
                client.totals,
                units=raw.num_rows,
                fresh_units=int(pc.sum(pc.invert(raw.column("cache_hit"))).as_py() or 0),
                started=started,
                concurrency=client.concurrency_for(j.model for j in judges),
            ),
        }
    )


def _validation_metadata(
    spec: Any, n: int, outcome: ValidationOutcome, judges: list[Any], panel_source: str
) -> dict[str, Any]:
    verdicts = outcome.verdicts
    consensus_values = [v.consensus for v in verdicts if v.consensus is not None]
    stages = outcome.stage_counts
    accepted = outcome.accepted
    return {
        "rows": accepted.num_rows,
        "input_rows": n,
        "rejected": outcome.rejected.num_rows,
        "rejected_by_stage": dg.MetadataValue.json(dict(stages)),
        "rejection_reasons": dg.MetadataValue.json(dict(outcome.reason_counts.most_common(15))),
        "rule_check_pass_rate": dg.MetadataValue.float(
            round(1 - stages.get("rules", 0) / max(1, n - stages.get("generation", 0)), 4)
        ),
        # "on", or "skipped: why" when the profile's calibration found the panel uninformative.
        "panel": "on" if spec.validation.judges_run else f"skipped ({panel_source})",
        "consensus_pass_rate": dg.MetadataValue.float(
            round(sum(v.passed for v in verdicts) / outcome.candidates, 4)
            if outcome.candidates and spec.validation.judges_run
            else 0.0
        ),
        "near_duplicates_removed": outcome.near_duplicates_removed,
        "overall_pass_rate": dg.MetadataValue.float(round(accepted.num_rows / n, 4) if n else 0.0),
        "mean_consensus": dg.MetadataValue.float(
            round(sum(consensus_values) / len(consensus_values), 4) if consensus_values else 0.0
        ),
        "consensus_threshold": spec.validation.threshold,
        "validators": dg.MetadataValue.json([j.model_dump() for j in judges]),
        "validator_calls_skipped": sum(v.skipped_calls for v in verdicts),
        "judge_calls_failed": len([j for j in outcome.judge_calls if j.error]),
        "consensus_histogram": histogram_markdown(consensus_values),
        "preview": markdown_table(
            accepted.slice(0, 5)
            .select(["example_id", "consensus", "validator_spread", "example_json"])
            .to_pylist(),
            ["example_id", "consensus", "validator_spread", "example_json"],
            limit=5,
            width=120,
        ),
        "rejected_preview": markdown_table(
            outcome.rejected.slice(0, 8).select(["example_id", "fail_stage", "fail_reasons"]).to_pylist(),
            ["example_id", "fail_stage", "fail_reasons"],
            limit=8,
            width=100,
        ),
    }
