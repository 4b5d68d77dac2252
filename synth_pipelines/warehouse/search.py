"""Semantic search over what a domain made: the nearest validated examples to a query.

Exact search runs in DuckDB over the ``example_embeddings`` Parquet with its core array function
``array_cosine_similarity`` on the ``FLOAT[384]`` column (no extension, no download). When the
``example_index`` asset has built an approximate (usearch HNSW) index for the domain and it still
matches the embeddings, that index answers instead; ``exact=True`` forces the exact path.

Readers read the Parquet files, never the DuckDB mirror, so search never waits on a writer's lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from synth_pipelines.spec.names import validate_domain_name
from synth_pipelines.warehouse.ann import load_index, vectors_of
from synth_pipelines.warehouse.storage import Warehouse
from synth_pipelines.warehouse.tables import EMBEDDING_DIM

# What a hit carries from its validated_examples row (the rest of the row is one read away).
HIT_COLUMNS = [
    "example_id",
    "cell_id",
    "seed_id",
    "problem",
    "complexity",
    "conditions_json",
    "generator_model",
    "prompt_hash",
    "structured_output",
    "consensus",
    "validator_spread",
    "spec_version",
    "validated_at",
    "example_json",
]

Embed = Callable[[Sequence[str]], np.ndarray]


class SearchError(ValueError):
    """A search that cannot run (no embeddings for the domain, bad parameters); the message says
    what to do."""


class SearchHit(BaseModel):
    example_id: str
    domain: str
    similarity: float = Field(description="cosine similarity of the example to the query, -1..1")
    example: dict[str, Any]
    consensus: float | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)


class SearchResult(BaseModel):
    domain: str
    query: str
    k: int
    method: str  # "exact" (DuckDB) or "ann" (usearch)
    searched: int  # examples in the domain's embeddings
    hits: list[SearchHit]


def load_embeddings(wh: Warehouse, domain: str) -> pa.Table:
    """The domain's ``example_embeddings`` partition, or a :class:`SearchError` saying how to make it."""
    table = wh.read_partition("example_embeddings", validate_domain_name(domain))
    if table is None:
        raise SearchError(
            f"domain {domain!r} has no example_embeddings yet: materialize it (make demo DOMAIN={domain}, "
            "or the domain's partition in the UI) before searching"
        )
    return table


# Corpus rows scored per step: the similarity block of a step stays small (200 queries x 16k rows
# is 13 MB), where one query over the cross join held every (query, row) pair: 1.2 GB at 100k rows.
EXACT_CHUNK = 16_384


def exact_neighbours(
    embeddings: pa.Table, queries: np.ndarray, k: int, *, vectors: np.ndarray | None = None
) -> list[list[tuple[str, float]]]:
    """For each query vector, the ``k`` (example_id, cosine similarity) pairs nearest to it, best
    first (ties by example_id, so results are deterministic). ``vectors``: the embeddings' matrix
    when the caller already has it. Scores the rows in bounded steps, keeping each query's best."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if q.shape[1] != EMBEDDING_DIM:
        raise SearchError(f"query vectors have {q.shape[1]} dimensions, the embeddings {EMBEDDING_DIM}")
    if vectors is None:
        vectors = vectors_of(embeddings)
    ids = [str(x) for x in embeddings.column("example_id").to_pylist()]
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    best: list[dict[int, float]] = [{} for _ in range(len(q))]
    for start in range(0, len(ids), EXACT_CHUNK):
        block = np.asarray(vectors[start : start + EXACT_CHUNK], dtype=np.float32)
        norms = np.maximum(np.linalg.norm(block, axis=1), 1e-12)
        sims = (q @ block.T) / norms
        take = min(k, sims.shape[1])
        # Every row at least as similar as the k-th of the step (ties included: the id decides).
        kth = np.partition(sims, sims.shape[1] - take, axis=1)[:, sims.shape[1] - take]
        for query_no, (row, bar) in enumerate(zip(sims, kth, strict=True)):
            for column in np.flatnonzero(row >= bar):
                best[query_no][start + int(column)] = float(row[column])
        for query_no, found in enumerate(best):
            if len(found) > 4 * k:  # keep the candidate lists short between steps
                kept = sorted(found.items(), key=lambda item: (-item[1], ids[item[0]]))[:k]
                best[query_no] = dict(kept)
    return [
        [(ids[i], s) for i, s in sorted(found.items(), key=lambda item: (-item[1], ids[item[0]]))[:k]]
        for found in best
    ]


def _hits(wh: Warehouse, domain: str, neighbours: list[tuple[str, float]]) -> list[SearchHit]:
    """Attach each neighbour's validated_examples row (its example, consensus and provenance)."""
    if not neighbours:
        return []
    table = wh.read_partition("validated_examples", domain)
    rows: dict[str, dict[str, Any]] = {}
    if table is not None:
        wanted = pa.array([n[0] for n in neighbours], pa.string())
        import pyarrow.compute as pc

        present = [c for c in HIT_COLUMNS if c in table.column_names]
        matched = table.filter(pc.is_in(table.column("example_id"), value_set=wanted)).select(present)
        rows = {r["example_id"]: r for r in matched.to_pylist()}
    hits = []
    for example_id, similarity in neighbours:
        row = rows.get(example_id)
        if row is None:  # embedded but no longer validated (a newer validation run dropped it)
            continue
        example = json.loads(row.pop("example_json") or "{}")
        consensus = row.pop("consensus", None)
        row.pop("example_id")
        hits.append(
            SearchHit(
                example_id=example_id,
                domain=domain,
                similarity=round(similarity, 6),
                example=example,
                consensus=consensus,
                provenance=row,
            )
        )
    return hits


def search(
    wh: Warehouse,
    domain: str,
    query: str,
    embed: Embed,
    *,
    k: int = 10,
    exact: bool = False,
) -> SearchResult:
    """The ``k`` validated examples of ``domain`` nearest to ``query`` (text embedded with ``embed``,
    the same model as the stored embeddings), with their consensus and provenance."""
    if not 1 <= k <= 1000:
        raise SearchError(f"k must be between 1 and 1000, got {k}")
    if not query.strip():
        raise SearchError("the query is empty")
    embeddings = load_embeddings(wh, domain)
    vector = np.asarray(embed([query]), dtype=np.float32)
    index = None if exact else load_index(wh, domain, embeddings)
    if index is not None:
        neighbours = index.search(vector, k)[0]
        method = "ann"
    else:
        neighbours = exact_neighbours(embeddings, vector, k)[0]
        method = "exact"
    return SearchResult(
        domain=domain,
        query=query,
        k=k,
        method=method,
        searched=embeddings.num_rows,
        hits=_hits(wh, domain, neighbours),
    )
