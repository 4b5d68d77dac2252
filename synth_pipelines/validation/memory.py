"""The domain's memory: every example it ever accepted, so that new work is checked against what was
already delivered and not only against its own batch.

``example_embeddings`` appends each newly accepted example's id and embedding to the append-only
``example_memory`` dataset. ``validated_examples`` then rejects, at stage ``memory_duplicate``, a
*new* example (an id never accepted before) whose embedding is within
``validation.memory_duplicate_threshold`` cosine of a remembered example with another id. An
example accepted before passes (it is the same example, regenerated from the cache), so reruns are
stable, and a feedback-loop regeneration cannot refill a domain with paraphrases of what its
consumers already have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from synth_pipelines.warehouse.storage import Warehouse
from synth_pipelines.warehouse.tables import EMBEDDING_DIM

MEMORY_DATASET = "example_memory"
MEMORY_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
        ("spec_version", pa.string()),
        ("remembered_at", pa.string()),
    ]
)
# Rows of memory compared at once (bounds the similarity matrix: 4096 x new rows floats).
CHUNK = 4096

Embed = Callable[[list[str]], np.ndarray]


@dataclass
class Memory:
    """What a domain accepted before: ids and unit-norm embeddings, in the same order."""

    ids: list[str]
    vectors: np.ndarray

    @property
    def known(self) -> set[str]:
        return set(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def load_memory(wh: Warehouse, domain: str) -> Memory:
    """The domain's memory (empty when it has none yet); an id remembered twice counts once."""
    table = wh.read_dataset(MEMORY_DATASET, columns=["example_id", "embedding"], domain=domain)
    if table is None or table.num_rows == 0:
        return Memory([], np.zeros((0, EMBEDDING_DIM), dtype=np.float32))
    ids = [str(x) for x in table.column("example_id").to_pylist()]
    chunks = [c.flatten() for c in table.column("embedding").chunks]
    vectors = np.asarray(pa.concat_arrays(chunks).to_numpy(zero_copy_only=False), dtype=np.float32)
    vectors = vectors.reshape(-1, EMBEDDING_DIM)
    first: dict[str, int] = {}
    for position, example_id in enumerate(ids):
        first.setdefault(example_id, position)
    keep = sorted(first.values())
    return Memory([ids[i] for i in keep], vectors[keep])


def remember(
    wh: Warehouse,
    domain: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    *,
    spec_version: str,
    remembered_at: str,
    memory: Memory | None = None,
) -> int:
    """Append the examples the memory does not hold yet; returns how many were added."""
    known = (memory or load_memory(wh, domain)).known
    new = [i for i, example_id in enumerate(ids) if example_id not in known]
    if not new:
        return 0
    flat = pa.array(np.ascontiguousarray(vectors[new], dtype=np.float32).reshape(-1), pa.float32())
    table = pa.table(
        {
            "example_id": pa.array([ids[i] for i in new], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, EMBEDDING_DIM),
            "spec_version": pa.array([spec_version] * len(new), pa.string()),
            "remembered_at": pa.array([remembered_at] * len(new), pa.string()),
        }
    ).cast(MEMORY_SCHEMA)
    wh.append_dataset(MEMORY_DATASET, domain, table)
    return len(new)


def memory_duplicates(
    ids: Sequence[str], vectors: np.ndarray, memory: Memory, threshold: float
) -> dict[int, tuple[str, float]]:
    """For each candidate (``ids[i]``, unit-norm ``vectors[i]``) that the memory does not hold
    itself, the most similar remembered example when it reaches ``threshold``: position ->
    (remembered id, cosine similarity). Exact, chunked over the memory."""
    if not len(memory) or not len(ids):
        return {}
    known = memory.known
    fresh = [i for i, example_id in enumerate(ids) if example_id not in known]
    if not fresh:
        return {}
    q = np.ascontiguousarray(vectors[fresh], dtype=np.float32)
    best = np.full(len(fresh), -2.0, dtype=np.float32)
    best_at = np.zeros(len(fresh), dtype=np.int64)
    for start in range(0, len(memory), CHUNK):
        block = memory.vectors[start : start + CHUNK]
        sims = q @ block.T
        top = sims.argmax(axis=1)
        values = sims[np.arange(len(fresh)), top]
        better = values > best
        best[better] = values[better]
        best_at[better] = top[better] + start
    return {
        fresh[k]: (memory.ids[int(best_at[k])], float(best[k]))
        for k in range(len(fresh))
        if best[k] >= threshold
    }
