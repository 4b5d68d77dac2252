"""raw_generations: one structured generator call per planned example."""

import json
import time
from typing import Any

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
from synth_pipelines.assets.problems import problem_matrix
from synth_pipelines.assets.spec_file import domain_spec_file
from synth_pipelines.generation.generate_rows import generate_examples, iter_plan_items, plan_table
from synth_pipelines.generation.matrix import MatrixCell
from synth_pipelines.generation.seeds import SeedProblem
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL
from synth_pipelines.validation.apply_gates import embedded_texts
from synth_pipelines.warehouse.inflight import InflightRows, build_partition
from synth_pipelines.warehouse.progress import Progress
from synth_pipelines.warehouse.tables import (
    RAW_GENERATIONS,
)


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
    group_name=PIPELINE_GROUP,
    deps=[problem_matrix, domain_spec_file],
    kinds={"parquet", "duckdb"},
)
def raw_generations(
    context: dg.AssetExecutionContext,
    config: GenerationConfig,
    warehouse: WarehouseResource,
    llm: LLMResource,
    embedder: EmbedderResource,
) -> dg.MaterializeResult:
    """Every generated example with full provenance (grain: one row per planned item of the matrix).

    Rows hold the example JSON or the failure reason and its kind, plus cell, seed, generator model,
    prompt hash, temperature, sampling seed, tokens, cost, latency, attempts and time. Rows are
    written as they finish (Parquet parts in the state folder), so a killed run resumes without
    calling the model again for finished items. The partition is published only when the plan is
    complete and the provider answered enough items; otherwise the previous partition stays and the
    run fails saying why (``allow_partial`` publishes anyway). While the generator calls wait on the
    network, a background thread embeds each good row into the embedding cache, so validation and
    ``example_embeddings`` find the vectors ready (``embeddings_prefetched`` says how many).
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
    # The example embeddings are computed while the generator calls wait on the network, into the
    # embedding cache that validated_examples and example_embeddings read (issue 25: overlap).
    prefetch = embedder.prefetcher(wh.embedding_cache_path)
    try:
        with prefetch:
            outcome = generate_examples(
                spec,
                iter_plan_items(cells, seeds, domain),
                client,
                sink,
                planned=planned,
                temperature=config.temperature,
                progress=progress,
                on_example=lambda example, problem: prefetch.submit(embedded_texts(spec, example, problem)),
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
        "embeddings_prefetched": dg.MetadataValue.json(prefetch.stats()),
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
