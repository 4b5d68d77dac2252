"""``example_embeddings`` and ``compiled_program``: what is built on top of the validated examples."""

import json
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pyarrow as pa

from synth_pipelines.assets._common import (
    histogram_markdown,
    load_materialized_spec,
    markdown_table,
    require_upstream,
    usage_metadata,
)
from synth_pipelines.assets.examples import validated_examples
from synth_pipelines.learning.program import (
    ProgramScore,
    build_metric,
    compile_program,
    evaluate_program,
    make_lm,
    save_program,
    split_examples,
    to_dspy_examples,
)
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL
from synth_pipelines.spec.text import example_text
from synth_pipelines.validation.consensus import judge_example, resolve_judges
from synth_pipelines.validation.diversity import diversity_stats
from synth_pipelines.warehouse.storage import DIVERSITY_FILE, PROGRAM_FILE, SCORE_FILE
from synth_pipelines.warehouse.tables import DOMAIN_DIVERSITY, EXAMPLE_EMBEDDINGS, to_table

GROUP = "learning"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"


@dg.asset(
    partitions_def=domain_partitions, group_name=GROUP, deps=[validated_examples], kinds={"parquet", "duckdb"}
)
def example_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, embedder: EmbedderResource
) -> dg.MaterializeResult:
    """A 384-d all-MiniLM-L6-v2 vector per validated example (grain: one row per example), plus the
    domain's diversity statistics (mean pairwise cosine distance, distinct-1/2) in the metadata.
    Also written to the DuckDB table ``example_embeddings`` with an ``embedding FLOAT[384]`` column."""
    domain = context.partition_key
    wh = warehouse.get()
    rows = require_upstream(wh, "validated_examples", domain).to_pylist()
    texts = [example_text(json.loads(r["example_json"])) for r in rows]
    vectors = embedder.embed(texts)
    out = [
        {
            "example_id": r["example_id"],
            "cell_id": r["cell_id"],
            "text": t,
            "embedding": v.tolist(),
            "embedding_model": EMBEDDING_MODEL,
        }
        for r, t, v in zip(rows, texts, vectors, strict=True)
    ]
    table = to_table(out, EXAMPLE_EMBEDDINGS)
    path = wh.write_partition("example_embeddings", domain, table)
    wh.replace_domain_rows("example_embeddings", domain, table, column_types={"embedding": "FLOAT[384]"})
    spec = load_materialized_spec(wh, domain)
    stats = diversity_stats(vectors, texts, cluster_threshold=spec.validation.cluster_threshold)
    stats_path = wh.write_json(DIVERSITY_FILE.format(domain=domain), stats)
    wh.replace_domain_rows(
        "domain_diversity",
        domain,
        to_table(
            [
                {
                    **{k: stats.get(k) for k in DOMAIN_DIVERSITY.names},
                    "diversity_threshold": spec.validation.diversity_threshold,
                }
            ],
            DOMAIN_DIVERSITY,
        ),
    )
    sims = (vectors @ vectors.T)[~_eye(len(vectors))] if len(vectors) > 1 else []
    return dg.MaterializeResult(
        metadata={
            "rows": len(out),
            "dimension": int(vectors.shape[1]) if len(vectors) else 384,
            "embedding_model": EMBEDDING_MODEL,
            "mean_pairwise_cosine_distance": dg.MetadataValue.float(
                round(stats["mean_pairwise_cosine_distance"] or 0.0, 4)
            ),
            "distinct_1": dg.MetadataValue.float(round(float(stats["distinct_1"] or 0.0), 4)),
            "distinct_2": dg.MetadataValue.float(round(float(stats["distinct_2"] or 0.0), 4)),
            "semantic_clusters": int(stats["clusters"] or 0),
            "pairwise_similarity_histogram": histogram_markdown([float(s) for s in sims], lo=-0.2, hi=1.0),
            "path": dg.MetadataValue.path(str(path)),
            "diversity_file": dg.MetadataValue.path(str(stats_path)),
            "preview": markdown_table(out, ["example_id", "cell_id", "text"], limit=5, width=100),
        }
    )


def _eye(n: int) -> Any:
    import numpy as np

    return np.eye(n, dtype=bool)


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
    """The domain's DSPy program (grain: one program per domain), compiled on a train split of the
    validated examples with the spec's optimizer, scored on the held-out split with the spec's metric,
    and saved as DSPy state JSON. The held-out score is appended to the DuckDB table
    ``agent_performance`` (source ``compiled_program``) as the baseline agent success."""
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    program_spec = spec.program_or_default()
    rows = require_upstream(wh, "validated_examples", domain).to_pylist()
    for r in rows:
        r["example"] = json.loads(r["example_json"])
    try:
        train_rows, test_rows = split_examples(rows, program_spec.train_fraction)
    except ValueError as e:
        raise dg.Failure(
            description=f"compiled_program for {domain!r}: {e}. Raise target_count or "
            "check the rejection reasons on validated_examples."
        ) from e
    client = llm.client(wh.cache_path)
    model = client.profile.roles.program
    lm = make_lm(spec, client, model)
    judge = None
    if program_spec.metric == "llm_judge":
        judges = resolve_judges(spec, client)

        def judge(gold: dict[str, Any], pred: dict[str, Any]) -> float:
            merged = {**gold, **pred}
            verdict = judge_example(
                client,
                spec,
                judges,
                example_id=json.dumps(gold, sort_keys=True)[:64],
                problem=spec.description,
                example=merged,
                early_stop=False,
            )
            return verdict.consensus or 0.0

    metric = build_metric(spec, program_spec, embedder.embed, judge)
    train, test = to_dspy_examples(train_rows, program_spec), to_dspy_examples(test_rows, program_spec)
    try:
        compiled = compile_program(spec, train, lm, metric)
        per_example, failures = evaluate_program(compiled, test, lm, program_spec, metric)
    except (ProviderError, ProviderConfigError) as e:
        raise dg.Failure(description=f"compiling the program for {domain!r}: {e}") from e
    score = ProgramScore(
        metric=program_spec.metric,
        optimizer=program_spec.optimizer,
        score=sum(per_example) / len(per_example),
        n_train=len(train),
        n_test=len(test),
        per_example=per_example,
        failures=failures,
        lm_calls=lm.calls,
    )
    path = save_program(compiled, wh.file(PROGRAM_FILE, domain))
    wh.write_json(SCORE_FILE.format(domain=domain), score.model_dump())
    recorded_at = datetime.now(UTC).isoformat(timespec="seconds")
    perf = pa.table(
        {
            "domain": [domain],
            "source": ["compiled_program"],
            "score": [score.score],
            "n": [score.n_test],
            "metric": [score.metric],
            "run_id": [context.run_id],
            "recorded_at": [recorded_at],
        }
    )
    _append_performance(wh, perf)
    return dg.MaterializeResult(
        metadata={
            "score": dg.MetadataValue.float(round(score.score, 4)),
            "metric": score.metric,
            "optimizer": score.optimizer,
            "n_train": score.n_train,
            "n_test": score.n_test,
            "prediction_failures": score.failures,
            "demos": len(getattr(compiled.predict, "demos", [])),
            "inputs": dg.MetadataValue.json(program_spec.inputs),
            "outputs": dg.MetadataValue.json(program_spec.outputs),
            "program_model": model,
            "program_path": dg.MetadataValue.path(str(path)),
            "score_histogram": histogram_markdown(per_example),
            **usage_metadata(client.totals),
        }
    )


def _append_performance(wh: Any, perf: pa.Table) -> None:
    """Append one row to ``agent_performance`` (the feedback loop's table), creating it if needed."""
    with wh.duckdb() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS agent_performance (domain VARCHAR, source VARCHAR, score DOUBLE, "
            "n BIGINT, metric VARCHAR, run_id VARCHAR, recorded_at TIMESTAMP)"
        )
        conn.register("perf_row", perf)
        conn.execute(
            "INSERT INTO agent_performance BY NAME SELECT * REPLACE (CAST(recorded_at AS TIMESTAMP) "
            "AS recorded_at) FROM perf_row"
        )
        conn.unregister("perf_row")
