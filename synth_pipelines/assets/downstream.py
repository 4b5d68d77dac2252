"""``example_embeddings`` and ``compiled_program``: what is built on top of the validated examples."""

import json
import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from synth_pipelines.assets._common import (
    histogram_markdown,
    load_materialized_spec,
    markdown_table,
    record_spend,
    require_upstream,
)
from synth_pipelines.assets.examples import validated_examples
from synth_pipelines.learning.outcomes import record_performance
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.client import BudgetExhausted
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL
from synth_pipelines.spec.text import example_text
from synth_pipelines.validation.diversity import diversity_stats, similarity_sample
from synth_pipelines.validation.memory import content_hash, remember
from synth_pipelines.warehouse.storage import DIVERSITY_FILE, PROGRAM_FILE, SCORE_FILE
from synth_pipelines.warehouse.tables import DOMAIN_DIVERSITY, EMBEDDING_DIM, EXAMPLE_EMBEDDINGS, to_table

GROUP = "learning"


def _example_rows(wh: Any, domain: str) -> dict[str, list[Any]]:
    """Only the columns the downstream assets read, as Python lists (never whole-row dicts)."""
    table = require_upstream(wh, "validated_examples", domain)
    return table.select(["example_id", "cell_id", "example_json"]).to_pydict()


@dg.asset(
    partitions_def=domain_partitions, group_name=GROUP, deps=[validated_examples], kinds={"parquet", "duckdb"}
)
def example_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, embedder: EmbedderResource
) -> dg.MaterializeResult:
    """A 384-d all-MiniLM-L6-v2 vector per validated example (grain: one row per example), plus the
    domain's diversity statistics: mean pairwise cosine distance (exact, in O(n·d)), distinct-1/2 and
    semantic clusters (SimHash LSH), and a histogram of pairwise similarities over a random sample of
    pairs. Also written to the DuckDB table ``example_embeddings`` with an ``embedding FLOAT[384]``
    column. Examples never accepted before are appended to the domain's ``example_memory``
    (``remembered_new_examples``), which later runs' ``memory_duplicate`` gate checks against."""
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    cols = _example_rows(wh, domain)
    texts = [example_text(json.loads(j)) for j in cols["example_json"]]
    started = time.perf_counter()
    vectors = embedder.embed(texts, cache_path=wh.embedding_cache_path)
    embed_s = time.perf_counter() - started
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    table = pa.table(
        {
            "example_id": pa.array(cols["example_id"], pa.string()),
            "cell_id": pa.array(cols["cell_id"], pa.string()),
            "text": pa.array(texts, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, EMBEDDING_DIM),
            "embedding_model": pa.array([embedder.model_name()] * len(texts), pa.string()),
        }
    ).cast(EXAMPLE_EMBEDDINGS)
    path = wh.write_dataset("example_embeddings", domain, table, column_types={"embedding": "FLOAT[384]"})
    # Remember what was accepted (new ids, and ids whose content changed), for later runs' memory gate.
    remembered = remember(
        wh,
        domain,
        cols["example_id"],
        vectors,
        hashes=[content_hash(t) for t in texts],
        spec_version=spec.version_str,
        remembered_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    stats = diversity_stats(vectors, texts, cluster_threshold=spec.validation.cluster_threshold)
    stats_path = wh.write_json(DIVERSITY_FILE.format(domain=domain), stats)
    wh.replace_domain_rows(
        "domain_diversity",
        domain,
        to_table(
            [
                {
                    **{k: stats.get(k) for k in DOMAIN_DIVERSITY.names},
                    "diversity_threshold": spec.validation.min_diversity,
                }
            ],
            DOMAIN_DIVERSITY,
        ),
    )
    sims, pairs, exact = similarity_sample(vectors)
    return dg.MaterializeResult(
        metadata={
            "rows": len(texts),
            "remembered_new_examples": remembered,
            "dimension": EMBEDDING_DIM,
            "embedding_model": embedder.model_name(),
            "embedding_backend": dg.MetadataValue.json(embedder.report()),
            "texts_per_s": dg.MetadataValue.float(round(len(texts) / embed_s, 1) if embed_s > 0 else 0.0),
            "mean_pairwise_cosine_distance": dg.MetadataValue.float(
                round(stats["mean_pairwise_cosine_distance"] or 0.0, 4)
            ),
            "distinct_1": dg.MetadataValue.float(round(float(stats["distinct_1"] or 0.0), 4)),
            "distinct_2": dg.MetadataValue.float(round(float(stats["distinct_2"] or 0.0), 4)),
            "semantic_clusters": int(stats["clusters"] or 0),
            "pairwise_similarity_histogram": histogram_markdown([float(s) for s in sims], lo=-0.2, hi=1.0),
            "similarity_histogram_pairs": dg.MetadataValue.text(
                f"all {pairs} pairs" if exact else f"a random sample of {pairs} pairs"
            ),
            "path": dg.MetadataValue.path(str(path)),
            "diversity_file": dg.MetadataValue.path(str(stats_path)),
            "preview": markdown_table(
                table.slice(0, 5).select(["example_id", "cell_id", "text"]).to_pylist(),
                ["example_id", "cell_id", "text"],
                limit=5,
                width=100,
            ),
        }
    )


@dg.asset(
    partitions_def=domain_partitions,
    pool=LLM_POOL,
    group_name=GROUP,
    deps=[example_embeddings],
    kinds={"dspy", "json"},
)
def compiled_program(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    llm: LLMResource,
    embedder: EmbedderResource,
) -> dg.MaterializeResult:
    """The domain's DSPy program (grain: one program per domain), compiled on a sample of the train
    split of the validated examples with the spec's optimizer, scored on a sample of the held-out
    split stratified by matrix cell (``program.eval_sample``, default 300) with the spec's metric,
    and saved as DSPy state JSON. The score and its 95% confidence interval are appended to the DuckDB
    table ``agent_performance`` (source ``compiled_program``) as the baseline agent success. A
    provider failure fails the asset; it never becomes a score."""
    # DSPy (and litellm under it) load here, not when the code location loads: other steps never pay.
    from synth_pipelines.learning.program import (
        example_rows,
        performance_row,
        program_threads,
        save_program,
        train_and_score,
    )
    from synth_pipelines.learning.train import TrainError, train_user_program

    started = time.monotonic()
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    program_spec = spec.program_or_default()
    rows = example_rows(_example_rows(wh, domain))
    client = llm.client(wh.cache_path)
    model = client.profile.roles.program
    threads = program_threads(client)
    embed = lambda texts: embedder.embed(texts, cache_path=wh.embedding_cache_path)  # noqa: E731
    program_source = "spec signature"
    try:
        if program_spec.module is not None:
            # The spec names the user's own dspy.Module (relative to the specs folder).
            try:
                program_file = program_spec.module_file(warehouse.schemas_dir)
            except ValueError as e:
                raise TrainError(str(e)) from e
            user, run = train_user_program(spec, rows, client, program_file, embed=embed, threads=threads)
            program_spec = program_spec.model_copy(update={"inputs": user.inputs, "outputs": user.outputs})
            program_source = f"{program_file} ({user.cls.__name__})"
        else:
            run = train_and_score(spec, rows, client, program_spec, embed=embed, threads=threads)
    except TrainError as e:
        raise dg.Failure(description=f"compiled_program for {domain!r}: program.module: {e}") from e
    except ValueError as e:  # fewer than 2 validated examples
        raise dg.Failure(
            description=f"compiled_program for {domain!r}: {e}. Raise target_count or "
            "check the rejection reasons on validated_examples."
        ) from e
    except (ProviderError, ProviderConfigError, BudgetExhausted) as e:
        raise dg.Failure(
            description=f"compiling or scoring the program for {domain!r}: {e}. No score was recorded "
            "(an outage is not a measurement); replies so far are cached, so a rerun resumes.",
        ) from e
    compiled, score = run.compiled, run.score
    low, high = score.ci_low, score.ci_high
    per_example = score.per_example
    path = save_program(compiled, wh.file(PROGRAM_FILE, domain))
    wh.write_json(SCORE_FILE.format(domain=domain), score.model_dump())
    record_performance(wh, performance_row(domain, "compiled_program", context.run_id, score))
    interval = (
        {"score_ci95_low": round(low, 4), "score_ci95_high": round(high, 4)}
        if low is not None and high is not None
        else {}
    )
    return dg.MaterializeResult(
        metadata={
            "score": dg.MetadataValue.float(round(score.score, 4)),
            **interval,
            "metric": score.metric,
            "optimizer": score.optimizer,
            "n_train": score.n_train,
            "n_heldout": score.n_heldout,
            "n_eval": score.n_eval,
            "eval_sample": dg.MetadataValue.text(
                f"{score.n_eval} of {score.n_heldout} held-out examples, stratified by matrix cell"
            ),
            "parse_failures": score.parse_failures,
            "demos": sum(len(p.demos) for _, p in compiled.named_predictors()),
            "program_source": program_source,
            "inputs": dg.MetadataValue.json(program_spec.inputs),
            "outputs": dg.MetadataValue.json(program_spec.outputs),
            "program_model": model,
            "program_threads": threads,
            "program_path": dg.MetadataValue.path(str(path)),
            "score_histogram": histogram_markdown(per_example),
            **record_spend(
                context, wh, client.totals, units=score.n_eval, started=started, concurrency=threads
            ),
        }
    )
