"""example_embeddings: one vector per validated example, and the domain's diversity."""

import json
import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from synth_pipelines.assets._common import (
    PIPELINE_GROUP,
    histogram_markdown,
    load_materialized_spec,
    markdown_table,
    require_upstream,
)
from synth_pipelines.assets.spec_file import domain_spec_file
from synth_pipelines.assets.validated_examples import validated_examples
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import EmbedderResource, WarehouseResource
from synth_pipelines.spec.text import example_text
from synth_pipelines.validation.diversity import diversity_stats, similarity_sample
from synth_pipelines.validation.memory import content_hash, remember
from synth_pipelines.warehouse.storage import DIVERSITY_FILE
from synth_pipelines.warehouse.tables import DOMAIN_DIVERSITY, EMBEDDING_DIM, EXAMPLE_EMBEDDINGS, to_table


def validated_rows(wh: Any, domain: str) -> dict[str, list[Any]]:
    """Only the columns the downstream assets read, as Python lists (never whole-row dicts)."""
    columns = ["example_id", "cell_id", "example_json"]
    return require_upstream(wh, "validated_examples", domain, columns=columns).to_pydict()


@dg.asset(
    partitions_def=domain_partitions,
    group_name=PIPELINE_GROUP,
    deps=[validated_examples, domain_spec_file],
    kinds={"parquet", "duckdb"},
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
    cols = validated_rows(wh, domain)
    texts = [example_text(json.loads(j)) for j in cols.pop("example_json")]  # the JSON is not needed again
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
