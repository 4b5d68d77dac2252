"""An approximate nearest-neighbour index (usearch HNSW, cosine) over a domain's embeddings.

Built by the ``example_index`` asset once a domain passes a configurable size (below it, exact
DuckDB search is fast enough). The index file sits in the state folder with a JSON sidecar: the
example ids in index order, and a fingerprint of the embeddings it was built from, so a stale index
(the embeddings were rematerialized since) is never used: search falls back to exact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from synth_pipelines.spec.names import validate_domain_name
from synth_pipelines.warehouse.storage import Warehouse, atomic_write_text
from synth_pipelines.warehouse.tables import EMBEDDING_DIM

# HNSW settings: connectivity 16 and expansion 64/128 keep recall@10 >= 0.95 at 20k-100k vectors of
# MiniLM (measured by the asset on every build and by the tests).
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128


def embeddings_fingerprint(embeddings: pa.Table, vectors: np.ndarray | None = None) -> str:
    """Identity of an embeddings partition: its ids in order, the vectors themselves and the
    embedding model. The vectors count because a regenerated example keeps its positional id: an
    index keyed on ids alone would serve the old content's vector for it. ``vectors``: the
    partition's matrix when the caller already has it (hashed in place, never copied: at 100,000
    rows a copy is 150 MB)."""
    h = hashlib.sha256()
    for example_id in embeddings.column("example_id").to_pylist():
        h.update(str(example_id).encode())
        h.update(b"\0")
    if "embedding" in embeddings.column_names and embeddings.num_rows:
        matrix = vectors_of(embeddings) if vectors is None else vectors
        h.update(np.ascontiguousarray(matrix, dtype=np.float32).data.cast("B"))
    if "embedding_model" in embeddings.column_names and embeddings.num_rows:
        h.update(str(embeddings.column("embedding_model")[0].as_py()).encode())
    return f"{embeddings.num_rows}:{h.hexdigest()[:24]}"


def vectors_of(embeddings: pa.Table) -> np.ndarray:
    """The ``embedding`` column as an (n, 384) float32 matrix (list or fixed-size list chunks)."""
    chunks = [c.flatten() for c in embeddings.column("embedding").chunks]
    flat = pa.concat_arrays(chunks) if chunks else pa.array([], pa.float32())
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, EMBEDDING_DIM)


class AnnIndex:
    """A usearch index plus the example ids its integer keys stand for."""

    def __init__(self, index: Any, ids: list[str]):
        self.index = index
        self.ids = ids

    @classmethod
    def build(cls, vectors: np.ndarray, ids: list[str]) -> AnnIndex:
        from usearch.index import Index

        index = Index(
            ndim=EMBEDDING_DIM,
            metric="cos",
            dtype="f32",
            connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD,
            expansion_search=EXPANSION_SEARCH,
        )
        if len(ids):
            index.add(np.arange(len(ids), dtype=np.uint64), np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(index, ids)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Per query, up to ``k`` (example_id, cosine similarity) pairs, best first."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if not self.ids:
            return [[] for _ in range(len(q))]
        matches = self.index.search(q, min(k, len(self.ids)))
        keys = np.atleast_2d(matches.keys)
        distances = np.atleast_2d(matches.distances)
        # One query gives a Matches (no counts: every key is a hit), several a BatchMatches.
        counts = np.atleast_1d(matches.counts) if hasattr(matches, "counts") else np.array([len(matches)])
        return [
            [(self.ids[int(keys[i, j])], float(1.0 - distances[i, j])) for j in range(int(counts[i]))]
            for i in range(len(q))
        ]


class IndexInfo(BaseModel):
    fingerprint: str
    rows: int
    recall_at_10: float | None
    recall_queries: int
    build_s: float
    ids_file: str


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_index(path: Path, ann: AnnIndex, info: IndexInfo) -> None:
    """Write the index, then the ids, then the sidecar last: a reader only trusts a sidecar whose
    fingerprint matches, so an interrupted build is never used."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _sidecar(path).unlink(missing_ok=True)
    tmp = path.with_suffix(".usearch.tmp")
    ann.index.save(str(tmp))
    tmp.replace(path)
    atomic_write_text(path.with_suffix(".ids.json"), json.dumps(ann.ids))
    atomic_write_text(_sidecar(path), info.model_dump_json())


def remove_index(path: Path) -> None:
    for p in (_sidecar(path), path, path.with_suffix(".ids.json")):
        p.unlink(missing_ok=True)


def index_info(path: Path) -> IndexInfo | None:
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        return None
    try:
        return IndexInfo.model_validate_json(sidecar.read_text())
    except ValueError:
        return None


def load_index(wh: Warehouse, domain: str, embeddings: pa.Table) -> AnnIndex | None:
    """The domain's index if one exists and was built from exactly these embeddings, else None."""
    from usearch.index import Index

    path = index_path(wh, domain)
    info = index_info(path)
    if info is None or info.fingerprint != embeddings_fingerprint(embeddings) or not path.is_file():
        return None
    index = Index.restore(str(path), view=True)
    if index is None:
        return None
    index.expansion_search = EXPANSION_SEARCH  # type: ignore[misc]  # a setter usearch's stubs miss
    ids = json.loads(path.with_suffix(".ids.json").read_text())
    return AnnIndex(index, ids)


def recall_at_k(
    ann: AnnIndex, exact: list[list[tuple[str, float]]], queries: np.ndarray, k: int = 10
) -> float:
    """Mean fraction of the exact top-``k`` that the index also returns in its top ``k``."""
    approx = ann.search(queries, k)
    found = [
        len({i for i, _ in a} & {i for i, _ in e}) / max(1, len(e))
        for a, e in zip(approx, exact, strict=True)
    ]
    return sum(found) / len(found) if found else 1.0


def index_path(wh: Warehouse, domain: str) -> Path:
    """Where the domain's ANN index lives: the state folder (a real filesystem; usearch maps files)."""
    return wh.state_dir / "index" / f"{validate_domain_name(domain)}.usearch"
