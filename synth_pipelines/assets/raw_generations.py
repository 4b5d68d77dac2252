"""raw_generations: one structured generator call per planned example, in shards that may run on
different workers, published as one partition."""

import json
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import dagster as dg
import duckdb
from pydantic import Field

from synth_pipelines.assets._common import (
    PIPELINE_GROUP,
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
from synth_pipelines.assets.problems import problem_matrix
from synth_pipelines.assets.spec_file import domain_spec_file
from synth_pipelines.generation.generate_rows import (
    GenerationOutcome,
    GenerationShard,
    PlannedItem,
    generate_examples,
    iter_plan_items,
    plan_table,
    shard_items,
)
from synth_pipelines.generation.matrix import MatrixCell
from synth_pipelines.generation.seeds import SeedProblem
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.tooluse.tools import ToolError, ToolSet
from synth_pipelines.validation.apply_gates import embedded_texts
from synth_pipelines.warehouse.inflight import InflightRows, build_partition
from synth_pipelines.warehouse.progress import Progress
from synth_pipelines.warehouse.storage import Warehouse
from synth_pipelines.warehouse.tables import (
    RAW_GENERATIONS,
)


class GenerationConfig(dg.Config):
    """``ops.raw_generations.config``: what a user sets; the graph hands each part to its step."""

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
    shards: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Split the domain's planned items into this many shards, each a step of its own "
        "(on synth_domain_celery any worker runs each). An item's shard follows from its id alone: "
        "the rows are the same whatever the count. A failed shard reruns alone (re-execute from "
        "failure); the others' rows stay in the state folder.",
    )


class ShardPlanConfig(dg.Config):
    shards: int = 1


class ShardRunConfig(dg.Config):
    temperature: float | None = None


class PublishConfig(dg.Config):
    allow_partial: bool = False
    max_provider_failure_rate: float = 0.2


def _fan_out_config(config: dict[str, Any]) -> dict[str, Any]:
    """The one user-facing config, split over the graph's steps."""
    user = GenerationConfig(**config)
    return {
        "plan_generation_shards": {"config": {"shards": user.shards}},
        "generate_shard": {"config": {"temperature": user.temperature}},
        "publish_generations": {
            "config": {
                "allow_partial": user.allow_partial,
                "max_provider_failure_rate": user.max_provider_failure_rate,
            }
        },
    }


class ShardReport(ShardUsage):
    """What one generation shard did, handed to the publishing step."""

    outcome: GenerationOutcome


class DomainPlan(NamedTuple):
    spec: DomainSpec
    cells: list[MatrixCell]
    seeds: list[SeedProblem]

    def items(self, domain: str) -> Iterator[PlannedItem]:
        return iter_plan_items(self.cells, self.seeds, domain)


def _domain_plan(wh: Warehouse, domain: str) -> DomainPlan:
    spec = load_materialized_spec(wh, domain)
    cells = [
        MatrixCell(**{**r, "conditions": json.loads(r.pop("conditions_json"))})
        for r in require_upstream(wh, "problem_matrix", domain).to_pylist()
    ]
    seeds = [SeedProblem(**r) for r in require_upstream(wh, "seed_problems", domain).to_pylist()]
    return DomainPlan(spec, cells, seeds)


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


@dg.op(
    ins={"problem_matrix": dg.In(dg.Nothing), "domain_spec_file": dg.In(dg.Nothing)},
    out=dg.DynamicOut(GenerationShard),
)
def plan_generation_shards(config: ShardPlanConfig) -> Iterator[dg.DynamicOutput[GenerationShard]]:
    """One step per shard of the domain's plan (``shards`` in ``ops.raw_generations.config``)."""
    for index in range(config.shards):
        shard = GenerationShard(index=index, of=config.shards)
        yield dg.DynamicOutput(shard, mapping_key=shard.label)


@dg.op(pool=LLM_POOL)
def generate_shard(
    context: dg.OpExecutionContext,
    config: ShardRunConfig,
    warehouse: WarehouseResource,
    llm: LLMResource,
    embedder: EmbedderResource,
    shard: GenerationShard,
) -> ShardReport:
    """Generate the items of one shard into the domain's rows in flight (Parquet parts in the state
    folder, named per process, so shards running at once never collide). A killed shard resumes
    without calling the model again for finished items."""
    domain = context.partition_key
    wh = warehouse.get()
    plan = _domain_plan(wh, domain)
    planned = sum(1 for _ in shard_items(plan.items(domain), shard))
    client = llm.client(wh.cache_path)
    split_budget(client, shard)
    sink = InflightRows(wh.inflight_dir("raw_generations", domain), RAW_GENERATIONS)
    progress = Progress(
        wh.progress_path(domain, shard.index if shard.of > 1 else None),
        asset="raw_generations",
        domain=domain,
        total=planned,
    )
    context.log.info(
        f"generating {planned} examples for {domain} ({shard.label} of {shard.of}) with "
        f"{client.generator_chain()} ({client.strategy} routing); {len(sink.part_files())} in-flight "
        "part file(s) to resume from"
    )
    try:  # a tool-use domain's tools: their files are checked before any model call
        tools = ToolSet(plan.spec, warehouse.schemas_dir) if plan.spec.type == "tool-use" else None
    except ToolError as e:
        raise dg.Failure(description=f"raw_generations for {domain!r}: {e}") from e
    # The example embeddings are computed while the generator calls wait on the network, into the
    # embedding cache that validated_examples and example_embeddings read (issue 25: overlap).
    prefetch = embedder.prefetcher(wh.embedding_cache_path)
    try:
        with prefetch:
            outcome = generate_examples(
                plan.spec,
                shard_items(plan.items(domain), shard),
                client,
                sink,
                planned=planned,
                temperature=config.temperature,
                progress=progress,
                on_example=lambda example, problem: prefetch.submit(
                    embedded_texts(plan.spec, example, problem)
                ),
                tools=tools,
            )
    except (ProviderError, ProviderConfigError) as e:
        raise provider_failure(
            f"generating examples for {domain!r} ({shard.label} of {shard.of}; {sink.written} new rows "
            "kept in the state folder; the previous partition is unchanged; a rerun resumes)",
            e,
        ) from e
    finally:
        progress.finish()
    return ShardReport(
        shard=shard,
        outcome=outcome,
        **shard_usage(client, client.generator_chain(), prefetch, progress),
    )


@dg.op(out=dg.Out(dg.Nothing))
def publish_generations(
    context: dg.OpExecutionContext,
    config: PublishConfig,
    warehouse: WarehouseResource,
    reports: list[ShardReport],
) -> None:
    """Build the partition from every shard's rows and publish it, only when the plan is complete
    and the provider answered enough items (else the previous partition stays)."""
    started = time.monotonic()
    domain = context.partition_key
    wh = warehouse.get()
    plan = _domain_plan(wh, domain)
    planned = sum(c.target for c in plan.cells)
    reports = sorted(reports, key=lambda r: r.shard.index)
    sink = InflightRows(wh.inflight_dir("raw_generations", domain), RAW_GENERATIONS)
    staged = wh.staging_file("raw_generations", domain)
    rows = build_partition(
        sink.part_files(),
        plan_table(plan.spec, plan.items(domain)),
        RAW_GENERATIONS,
        staged,
        temp_dir=wh.state_dir,
    )
    summary = _partition_summary(staged)
    outcomes = [r.outcome for r in reports]
    stopped = next((o.stopped_reason for o in outcomes if o.stopped_reason), None)
    generated = sum(o.generated for o in outcomes)
    usage = record_spend(
        context,
        wh,
        merged_totals(reports),
        units=generated,
        fresh_units=sum(o.fresh for o in outcomes),
        started=started - longest_shard_s(reports),
        concurrency=max(r.concurrency for r in reports),
    )
    meta: dict[str, Any] = {
        "rows": rows,
        "planned": planned,
        "shards": len(reports),
        "ok": summary["ok"],
        "failed": summary["failed"],
        "provider_failed": summary["provider_failed"],
        "resumed": sum(o.resumed for o in outcomes),
        "generated_now": generated,
        "stopped_reason": stopped or "",
        "failure_reasons": dg.MetadataValue.json(summary["failure_reasons"]),
        "adaptive_concurrency": dg.MetadataValue.json(per_shard(reports, "gate_stats")),
        "embeddings_prefetched": dg.MetadataValue.json(per_shard(reports, "prefetched")),
        **summed_progress(reports),
        **usage,
    }
    problems = []
    if rows < planned:
        problems.append(
            f"{planned - rows} of {planned} planned items have no row" + (f" ({stopped})" if stopped else "")
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
    context.add_output_metadata(meta)


@dg.graph_asset(
    partitions_def=domain_partitions,
    group_name=PIPELINE_GROUP,
    ins={
        "problem_matrix": dg.AssetIn(key=problem_matrix.key, dagster_type=dg.Nothing),
        "domain_spec_file": dg.AssetIn(key=domain_spec_file.key, dagster_type=dg.Nothing),
    },
    config=dg.ConfigMapping(config_fn=_fan_out_config, config_schema=GenerationConfig.to_config_schema()),
    kinds={"parquet", "duckdb"},
)
def raw_generations(problem_matrix: Any, domain_spec_file: Any) -> Any:
    """Every generated example with full provenance (grain: one row per planned item of the matrix).

    Rows hold the example JSON or the failure reason and its kind, plus cell, seed, generator model,
    prompt hash, temperature, sampling seed, tokens, cost, latency, attempts and time. The plan is
    split into ``shards`` steps (1 by default; each item's shard follows from its id), which write
    their rows as they finish (Parquet parts in the state folder), so a killed run resumes without
    calling the model again for finished items, and on ``synth_domain_celery`` the shards run on
    any worker. The partition is published only when the plan is complete and the provider answered
    enough items; otherwise the previous partition stays and the run fails saying why
    (``allow_partial`` publishes anyway). While the generator calls wait on the network, a
    background thread embeds each good row into the embedding cache, so validation and
    ``example_embeddings`` find the vectors ready (``embeddings_prefetched`` says how many).
    """
    shards = plan_generation_shards(problem_matrix=problem_matrix, domain_spec_file=domain_spec_file)
    return publish_generations(shards.map(generate_shard).collect())
