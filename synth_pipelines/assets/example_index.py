"""``example_index``: the approximate nearest-neighbour index that semantic search uses at scale."""

import time

import dagster as dg
import numpy as np

from synth_pipelines.assets._common import PIPELINE_GROUP, require_upstream
from synth_pipelines.assets.example_embeddings import example_embeddings
from synth_pipelines.assets.spec_file import domain_spec_file
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import WarehouseResource
from synth_pipelines.warehouse.ann import (
    AnnIndex,
    IndexInfo,
    embeddings_fingerprint,
    index_path,
    recall_at_k,
    remove_index,
    save_index,
    vectors_of,
)
from synth_pipelines.warehouse.search import exact_neighbours
from synth_pipelines.warehouse.storage import INDEX_FILE

# Queries sampled from the domain's own vectors to measure the index against exact search.
RECALL_QUERIES = 200


class IndexConfig(dg.Config):
    min_rows: int = 5000
    """Build the ANN index only when the domain has at least this many examples; below it exact
    DuckDB search answers in milliseconds and no index is kept."""


@dg.asset(
    partitions_def=domain_partitions,
    group_name=PIPELINE_GROUP,
    deps=[example_embeddings, domain_spec_file],
    kinds={"usearch"},
)
def example_index(
    context: dg.AssetExecutionContext, config: IndexConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """A usearch HNSW index (cosine) over the domain's example embeddings, in the state folder
    (``index/<domain>.usearch``), built when the domain has at least ``min_rows`` examples; the
    warehouse's ``example_index/domain=<d>/index.json`` says which search the domain uses. Its
    recall@10 against exact search (on up to 200 of the domain's own vectors as queries) is in the
    metadata. Below ``min_rows`` any earlier index is removed and ``synth search`` uses exact search;
    an index built from older embeddings is never used either (fingerprint check)."""
    domain = context.partition_key
    wh = warehouse.get()
    # Not the text column: the index, its fingerprint and the recall check need ids and vectors only.
    embeddings = require_upstream(
        wh, "example_embeddings", domain, columns=["example_id", "embedding", "embedding_model"]
    )
    path = index_path(wh, domain)
    rows = embeddings.num_rows
    if rows < config.min_rows:
        remove_index(path)
        record = wh.write_json(INDEX_FILE.format(domain=domain), {"method": "exact", "rows": rows})
        return dg.MaterializeResult(
            metadata={
                "rows": rows,
                "method": "exact",
                "note": f"{rows} examples < min_rows {config.min_rows}: exact DuckDB search, no index",
                "path": dg.MetadataValue.path(str(record)),
            }
        )
    vectors = vectors_of(embeddings)
    ids = [str(x) for x in embeddings.column("example_id").to_pylist()]
    started = time.perf_counter()
    ann = AnnIndex.build(vectors, ids)
    build_s = time.perf_counter() - started
    sample = np.random.default_rng(0).choice(rows, size=min(RECALL_QUERIES, rows), replace=False)
    queries = vectors[np.sort(sample)]
    recall = recall_at_k(ann, exact_neighbours(embeddings, queries, 10, vectors=vectors), queries, 10)
    info = IndexInfo(
        fingerprint=embeddings_fingerprint(embeddings, vectors),
        rows=rows,
        recall_at_10=round(recall, 4),
        recall_queries=len(queries),
        build_s=round(build_s, 3),
        ids_file=path.with_suffix(".ids.json").name,
    )
    save_index(path, ann, info)
    wh.write_json(INDEX_FILE.format(domain=domain), {"method": "ann", **info.model_dump()})
    return dg.MaterializeResult(
        metadata={
            "rows": rows,
            "method": "ann",
            "recall_at_10": dg.MetadataValue.float(info.recall_at_10 or 0.0),
            "recall_queries": len(queries),
            "build_s": dg.MetadataValue.float(info.build_s),
            "path": dg.MetadataValue.path(str(path)),
        }
    )
