"""validated_examples: every quality gate applied to the raw generations."""

import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from synth_pipelines.assets._common import (
    PIPELINE_GROUP,
    histogram_markdown,
    load_materialized_spec,
    markdown_table,
    provider_failure,
    record_spend,
    require_upstream,
)
from synth_pipelines.assets._shards import (
    ShardUsage,
    longest_shard_s,
    merged_totals,
    per_shard,
    shard_usage,
    split_budget,
    summed_progress,
)
from synth_pipelines.assets.raw_generations import raw_generations
from synth_pipelines.assets.spec_file import domain_review_calibration, domain_spec_file
from synth_pipelines.generation.generate_rows import GenerationShard
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.validation.apply_gates import (
    JudgedCandidates,
    ScreeningVerdicts,
    ValidationOutcome,
    finish_validation,
    judge_candidates,
    restore_screening,
    rows_digest,
    screen_candidates,
    screen_examples,
    texts_to_prefetch,
)
from synth_pipelines.validation.consensus import resolve_judges
from synth_pipelines.validation.decontamination import NgramIndex, build_index, decontamination_summary
from synth_pipelines.validation.gates import judged_pass_rate
from synth_pipelines.validation.memory import load_memory
from synth_pipelines.warehouse.progress import Progress


class ValidationConfig(dg.Config):
    """``ops.validated_examples.config``: what a user sets; the graph hands each part to its step."""

    early_stop: bool = Field(default=True, description="Skip remaining judges once the outcome is decided.")
    shards: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Judge the domain's candidates in this many shards, each a step of its own (on "
        "synth_domain_celery any worker runs each). A candidate's shard follows from its id alone, "
        "as in raw_generations; the screening before the panel and the deduplication after it see "
        "the whole domain, so the accepted rows are the same whatever the count.",
    )


class ShardPlanConfig(dg.Config):
    shards: int = 1


class JudgeShardConfig(dg.Config):
    early_stop: bool = True


def _fan_out_config(config: dict[str, Any]) -> dict[str, Any]:
    """The one user-facing config, split over the graph's steps."""
    user = ValidationConfig(**config)
    return {
        "plan_validation_shards": {"config": {"shards": user.shards}},
        "judge_shard": {"config": {"early_stop": user.early_stop}},
    }


class ValidationShard(BaseModel):
    """One shard's candidates: the example ids the screening passed that this shard holds, and the
    digest of their rows as screened."""

    shard: GenerationShard
    candidate_ids: list[str]
    digest: str


class JudgeShardReport(ShardUsage):
    """What one validation shard's judges said, handed to the publishing step."""

    judged: JudgedCandidates


class _Inputs(NamedTuple):
    spec: DomainSpec
    raw: pa.Table


def _inputs(warehouse: WarehouseResource, domain: str) -> _Inputs:
    wh = warehouse.get()
    # Not the model's raw replies (``raw_text``, as large as the examples): validation never reads them.
    raw = require_upstream(wh, "raw_generations", domain, skip={"raw_text"})
    return _Inputs(load_materialized_spec(wh, domain), raw)


def _eval_index(warehouse: WarehouseResource, spec: DomainSpec) -> NgramIndex:
    try:
        return build_index(warehouse.schemas_dir, spec.decontamination)
    except ValueError as e:  # an eval set that cannot be read: says which
        raise dg.Failure(description=str(e)) from e


@dg.op(
    ins={
        "raw_generations": dg.In(dg.Nothing),
        "domain_spec_file": dg.In(dg.Nothing),
        "domain_review_calibration": dg.In(dg.Nothing),
    },
    out={"shards": dg.DynamicOut(ValidationShard), "screened": dg.Out(ScreeningVerdicts)},
)
def plan_validation_shards(
    context: dg.OpExecutionContext, config: ShardPlanConfig, warehouse: WarehouseResource
) -> Iterator[dg.DynamicOutput[ValidationShard] | dg.Output[ScreeningVerdicts]]:
    """Screen every raw row (generation status, rule checks, SQL rules, exact duplicates,
    decontamination: no model calls) and hand each shard the candidates it holds; the verdicts go
    to the publishing step, so the checks run once per domain."""
    spec, raw = _inputs(warehouse, context.partition_key)
    screening = screen_examples(spec, raw, _eval_index(warehouse, spec))
    ids, texts = screening.cols["example_id"], screening.cols["example_json"]
    context.log.info(
        f"{len(screening.candidates)} of {screening.rows} rows passed the screening; judging them in "
        f"{config.shards} shard(s)"
    )
    for index in range(config.shards):
        shard = GenerationShard(index=index, of=config.shards)
        mine = [i for i in screening.candidates if shard.holds(ids[i])]
        yield dg.DynamicOutput(
            ValidationShard(
                shard=shard,
                candidate_ids=[ids[i] for i in mine],
                digest=rows_digest([ids[i] for i in mine], [texts[i] for i in mine]),
            ),
            output_name="shards",
            mapping_key=shard.label,
        )
    yield dg.Output(screening.verdicts(), output_name="screened")


@dg.op(pool=LLM_POOL)
def judge_shard(
    context: dg.OpExecutionContext,
    config: JudgeShardConfig,
    warehouse: WarehouseResource,
    llm: LLMResource,
    embedder: EmbedderResource,
    planned: ValidationShard,
) -> JudgeShardReport:
    """The embedding gates and the judge panel over one shard's candidates. Judge replies go to the
    response cache as they arrive, so a failed shard's rerun pays only for what it had not judged."""
    domain, shard = context.partition_key, planned.shard
    wh = warehouse.get()
    inputs = _inputs(warehouse, domain)
    try:
        screening = screen_candidates(inputs.spec, inputs.raw, planned.candidate_ids, planned.digest)
    except ValueError as e:
        raise dg.Failure(
            description=f"validated_examples for {domain!r} ({shard.label}): {e}. Rerun the whole asset."
        ) from e
    client = llm.client(wh.cache_path)
    split_budget(client, shard)
    try:
        judges = resolve_judges(inputs.spec, client)
    except ValueError as e:  # an unknown judge: says which
        raise dg.Failure(description=str(e)) from e
    progress = Progress(
        wh.progress_path(domain, shard.index if shard.of > 1 else None),
        asset="validated_examples",
        domain=domain,
        total=len(planned.candidate_ids),
    )
    # Examples' embeddings computed while the judges wait on the network (issue 25: overlap).
    prefetch = embedder.prefetcher(wh.embedding_cache_path)
    try:
        with prefetch:
            # Only what the cache lacks: most rows were embedded while they were generated.
            prefetch.submit(
                embedder.uncached(
                    texts_to_prefetch(inputs.spec, screening), cache_path=wh.embedding_cache_path
                )
            )
            judged = judge_candidates(
                inputs.spec,
                screening,
                client,
                judges,
                early_stop=config.early_stop,
                progress=progress,
                similarity=lambda problems, texts: embedder.similarity(
                    problems, texts, cache_path=wh.embedding_cache_path
                ),
                embed=lambda texts: embedder.embed(texts, cache_path=wh.embedding_cache_path),
            )
    except (ProviderError, ProviderConfigError) as e:
        raise provider_failure(
            f"validating examples for {domain!r} ({shard.label} of {shard.of}; judge replies so far are "
            "cached; the previous partition is unchanged)",
            e,
        ) from e
    finally:
        progress.finish()
    return JudgeShardReport(
        shard=shard,
        judged=judged,
        **shard_usage(client, [j.model for j in judges], prefetch, progress),
    )


@dg.op(out=dg.Out(dg.Nothing))
def publish_validation(
    context: dg.OpExecutionContext,
    warehouse: WarehouseResource,
    llm: LLMResource,
    embedder: EmbedderResource,
    reports: list[JudgeShardReport],
    screened: ScreeningVerdicts,
) -> None:
    """The shards' verdicts over the whole domain's screening, then the domain-wide gates (near
    duplicates, memory), written as the partition."""
    started = time.monotonic()
    domain = context.partition_key
    wh = warehouse.get()
    spec, raw = _inputs(warehouse, domain)
    eval_index = _eval_index(warehouse, spec)
    reports = sorted(reports, key=lambda r: r.shard.index)
    judges = resolve_judges(spec, llm.client(wh.cache_path))
    try:
        outcome = finish_validation(
            spec,
            raw,
            restore_screening(spec, raw, screened),
            JudgedCandidates.merged([r.judged for r in reports]),
            memory=load_memory(wh, domain),
            embed=lambda texts: embedder.embed(texts, cache_path=wh.embedding_cache_path),
        )
    except ValueError as e:  # raw changed between the steps, or a shard's verdicts are missing
        raise dg.Failure(description=f"validated_examples for {domain!r}: {e}. Rerun the asset.") from e
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
    context.add_output_metadata(
        {
            **_validation_metadata(
                spec, raw.num_rows, outcome, judges, wh.threshold_source(domain, "panel") or ""
            ),
            "shards": len(reports),
            "decontamination": dg.MetadataValue.json(
                decontamination_summary(
                    spec.decontamination, eval_index, outcome.overlaps_by_eval_set, outcome.flagged
                )
            ),
            "adaptive_concurrency": dg.MetadataValue.json(per_shard(reports, "gate_stats")),
            "embeddings_prefetched": dg.MetadataValue.json(per_shard(reports, "prefetched")),
            "path": dg.MetadataValue.path(str(path)),
            **summed_progress(reports),
            # Units: raw rows; fresh: rows generated by a model call (their judge calls are new too).
            **record_spend(
                context,
                wh,
                merged_totals(reports),
                units=raw.num_rows,
                fresh_units=int(pc.sum(pc.invert(raw.column("cache_hit"))).as_py() or 0),
                started=started - longest_shard_s(reports),
                concurrency=max(r.concurrency for r in reports),
            ),
        }
    )


@dg.graph_asset(
    partitions_def=domain_partitions,
    group_name=PIPELINE_GROUP,
    ins={
        "raw_generations": dg.AssetIn(key=raw_generations.key, dagster_type=dg.Nothing),
        "domain_spec_file": dg.AssetIn(key=domain_spec_file.key, dagster_type=dg.Nothing),
        "domain_review_calibration": dg.AssetIn(key=domain_review_calibration.key, dagster_type=dg.Nothing),
    },
    config=dg.ConfigMapping(config_fn=_fan_out_config, config_schema=ValidationConfig.to_config_schema()),
    kinds={"parquet", "duckdb"},
)
def validated_examples(raw_generations: Any, domain_spec_file: Any, domain_review_calibration: Any) -> Any:
    """Examples that passed every gate (grain: one row per accepted example).

    Gates, in order: rule-based schema compliance and degenerate-text checks, the spec's SQL rules,
    exact-duplicate removal on the spec's uniqueness fields, decontamination against the spec's
    eval sets, the on-topic gate (similarity of the example to its problem, when the profile's
    calibration turns it on), the cross-field agreement gate (two text fields of one example that
    talk about different things: ``inconsistent_fields``), then multi-model validation (weighted
    consensus of the validator models against the spec's threshold; skipped, and said so in the
    ``panel`` metadata, when the profile's calibration found the panel adds no agreement: rows are
    then accepted unjudged, consensus null), then near-duplicate removal, then the domain's memory:
    a new example within ``memory_duplicate_threshold`` cosine of one accepted in an earlier run is
    rejected (``memory_duplicate``). Accepted rows keep their provenance and per-validator scores;
    rejected rows land in ``rejected_examples`` with stage and reasons (always written, even when
    nothing is accepted). Also written to the DuckDB tables ``validated_examples`` and
    ``rejected_examples``.

    Steps: ``plan_validation_shards`` screens every row (no model calls), ``judge_shard[shard_k]``
    runs the embedding gates and the panel over the candidates of one of ``shards`` shards (1 by
    default; on ``synth_domain_celery`` any worker runs each), and ``publish_validation`` applies
    the screening's and the shards' verdicts and the domain-wide gates and writes the partition
    (the text checks run once: the later steps only parse the examples again). When no judge could score
    anything because the validators' provider failed, the asset fails naming the cause and the
    previous ``validated_examples`` partition stays. The CPU work overlaps the judge calls: the
    embedding gates run chunk by chunk in a worker thread, each chunk's judges starting as soon as
    it passed, and with those gates off a background thread embeds the examples for the memory gate
    and ``example_embeddings`` (``embeddings_prefetched``).
    """
    shards, screened = plan_validation_shards(
        raw_generations=raw_generations,
        domain_spec_file=domain_spec_file,
        domain_review_calibration=domain_review_calibration,
    )
    return publish_validation(shards.map(judge_shard).collect(), screened)


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
