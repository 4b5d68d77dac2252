"""validated_examples: every quality gate applied to the raw generations."""

import time
from typing import Any

import dagster as dg
import pyarrow.compute as pc
from pydantic import Field

from synth_pipelines.assets._common import (
    PIPELINE_GROUP,
    histogram_markdown,
    load_materialized_spec,
    markdown_table,
    provider_failure,
    record_spend,
    require_upstream,
)
from synth_pipelines.assets.raw_generations import raw_generations
from synth_pipelines.assets.spec_file import domain_review_calibration, domain_spec_file
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL
from synth_pipelines.validation.apply_gates import ValidationOutcome, texts_to_prefetch, validate_examples
from synth_pipelines.validation.consensus import resolve_judges
from synth_pipelines.validation.decontamination import build_index, decontamination_summary
from synth_pipelines.validation.gates import judged_pass_rate
from synth_pipelines.validation.memory import load_memory
from synth_pipelines.warehouse.progress import Progress


class ValidationConfig(dg.Config):
    early_stop: bool = Field(default=True, description="Skip remaining judges once the outcome is decided.")


@dg.asset(
    partitions_def=domain_partitions,
    pool=LLM_POOL,
    group_name=PIPELINE_GROUP,
    deps=[raw_generations, domain_spec_file, domain_review_calibration],
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
    previous ``validated_examples`` partition stays. The CPU work overlaps the judge calls: the
    embedding gates run chunk by chunk in a worker thread, each chunk's judges starting as soon as
    it passed, and with those gates off a background thread embeds the examples for the memory gate
    and ``example_embeddings`` (``embeddings_prefetched``).
    """
    started = time.monotonic()
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    raw = require_upstream(wh, "raw_generations", domain)
    client = llm.client(wh.cache_path)
    try:
        judges = resolve_judges(spec, client)
        eval_index = build_index(warehouse.schemas_dir, spec.decontamination)
    except ValueError as e:  # an unknown judge, or an eval set that cannot be read: says which
        raise dg.Failure(description=str(e)) from e
    progress = Progress(
        wh.progress_path(domain), asset="validated_examples", domain=domain, total=raw.num_rows
    )
    # Examples' embeddings computed while the judges wait on the network (issue 25: overlap).
    prefetch = embedder.prefetcher(wh.embedding_cache_path)
    try:
        with prefetch:
            # Only what the cache lacks: most rows were embedded while they were generated.
            prefetch.submit(
                embedder.uncached(texts_to_prefetch(spec, raw), cache_path=wh.embedding_cache_path)
            )
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
                eval_index=eval_index,
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
            "decontamination": dg.MetadataValue.json(
                decontamination_summary(
                    spec.decontamination, eval_index, outcome.overlaps_by_eval_set, outcome.flagged
                )
            ),
            "adaptive_concurrency": dg.MetadataValue.json(client.gate_stats()),
            "embeddings_prefetched": dg.MetadataValue.json(prefetch.stats()),
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
    pass_rate = judged_pass_rate(accepted.num_rows, stages).rate if spec.validation.judges_run else None
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
        "consensus_pass_rate": dg.MetadataValue.float(round(pass_rate, 4) if pass_rate is not None else 0.0),
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
