"""The domain's memory: every example it ever accepted, so that new work is checked against what was
already delivered and not only against its own batch.

``example_embeddings`` appends each newly accepted example's id and embedding to the append-only
``example_memory`` dataset, keyed by content: each row holds the hash of the text that was
embedded. ``validated_examples`` then rejects, at stage ``memory_duplicate``, a candidate whose
embedding is within ``validation.memory_duplicate_threshold`` cosine of a remembered example with
another id. A candidate whose id *and* content were accepted before passes (it is the same example,
regenerated from the cache), so reruns are stable. A remembered id whose content changed is a new
example: it is compared like any other (a regenerated row cannot copy another remembered example
through an old id), and once accepted its new content replaces the old in the memory. A
feedback-loop regeneration so cannot refill a domain with paraphrases of what its consumers
already have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from synth_pipelines.spec.text import stable_hash
from synth_pipelines.warehouse.storage import Warehouse
from synth_pipelines.warehouse.tables import EMBEDDING_DIM

MEMORY_DATASET = "example_memory"
MEMORY_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        # sha of the embedded text (content_hash): the memory knows what an id held, not only the id.
        ("content_hash", pa.string()),
        ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
        ("spec_version", pa.string()),
        ("remembered_at", pa.string()),
    ]
)
# Rows of memory, and of new examples, compared at once: the similarity matrix stays 4096 x 4096
# floats (64 MB). Chunking the memory alone made it 4096 x all new rows: 1.6 GB at 100,000.
CHUNK = 4096

Embed = Callable[[list[str]], np.ndarray]


def content_hash(text: str) -> str:
    """The key the memory holds an example's content by: a hash of the text that was embedded."""
    return stable_hash(text, length=24)


@dataclass
class Memory:
    """What a domain accepted before: ids, the hash of each id's latest content, and unit-norm
    embeddings, in the same order (one entry per id)."""

    ids: list[str]
    vectors: np.ndarray
    hashes: list[str | None] | None = None

    def __post_init__(self) -> None:
        if self.hashes is None:
            self.hashes = [None] * len(self.ids)

    @property
    def delivered(self) -> set[tuple[str, str | None]]:
        """(id, content hash) pairs the memory holds: a candidate equal to one was accepted before."""
        return set(zip(self.ids, self.hashes or [], strict=True))

    def __len__(self) -> int:
        return len(self.ids)


def load_memory(wh: Warehouse, domain: str) -> Memory:
    """The domain's memory (empty when it has none yet): for each id, the latest content it was
    remembered with. Parts written before content hashes were kept read as hash None (such an id is
    then compared as new once, and remembered with its hash)."""
    # Not spec_version: at 100,000 remembered rows every column not used is tens of MB held.
    table = wh.read_dataset(MEMORY_DATASET, domain=domain, skip={"spec_version"})
    if table is None or table.num_rows == 0:
        return Memory([], np.zeros((0, EMBEDDING_DIM), dtype=np.float32), [])
    ids = [str(x) for x in table.column("example_id").to_pylist()]
    hashes = (
        [None if h is None else str(h) for h in table.column("content_hash").to_pylist()]
        if "content_hash" in table.column_names
        else [None] * len(ids)
    )
    order = (
        [str(t) for t in table.column("remembered_at").to_pylist()]
        if "remembered_at" in table.column_names
        else [""] * len(ids)
    )
    chunks = [c.flatten() for c in table.column("embedding").chunks]
    vectors = np.asarray(pa.concat_arrays(chunks).to_numpy(zero_copy_only=False), dtype=np.float32)
    vectors = vectors.reshape(-1, EMBEDDING_DIM)
    latest: dict[str, int] = {}
    # Parts come in file order; remembered_at breaks ties so the newest content of an id wins.
    for position in sorted(range(len(ids)), key=lambda i: order[i]):
        latest[ids[position]] = position
    keep = sorted(latest.values())
    if len(keep) == len(ids):  # each id once (the usual case): no copy of the matrix
        return Memory(ids, vectors, hashes)
    return Memory([ids[i] for i in keep], vectors[keep], [hashes[i] for i in keep])


def remember(
    wh: Warehouse,
    domain: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    *,
    hashes: Sequence[str],
    spec_version: str,
    remembered_at: str,
    memory: Memory | None = None,
) -> int:
    """Append the examples the memory does not hold with this content yet (new ids, and ids whose
    content changed; ``hashes[i]`` is :func:`content_hash` of example ``i``'s embedded text);
    returns how many were added."""
    delivered = (memory or load_memory(wh, domain)).delivered
    new = [i for i, example_id in enumerate(ids) if (example_id, hashes[i]) not in delivered]
    if not new:
        return 0
    flat = pa.array(np.ascontiguousarray(vectors[new], dtype=np.float32).reshape(-1), pa.float32())
    table = pa.table(
        {
            "example_id": pa.array([ids[i] for i in new], pa.string()),
            "content_hash": pa.array([hashes[i] for i in new], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, EMBEDDING_DIM),
            "spec_version": pa.array([spec_version] * len(new), pa.string()),
            "remembered_at": pa.array([remembered_at] * len(new), pa.string()),
        }
    ).cast(MEMORY_SCHEMA)
    wh.append_dataset(MEMORY_DATASET, domain, table)
    return len(new)


def memory_duplicates(
    ids: Sequence[str], vectors: np.ndarray, memory: Memory, threshold: float, *, texts: Sequence[str]
) -> dict[int, tuple[str, float]]:
    """For each candidate (``ids[i]``, unit-norm ``vectors[i]``, content ``texts[i]``) that the
    memory does not hold with this very content, the most similar remembered example *of another
    id* when it reaches ``threshold``: position -> (remembered id, cosine similarity). Exact,
    chunked over the memory."""
    if not len(memory) or not len(ids):
        return {}
    delivered = memory.delivered
    fresh = [i for i, example_id in enumerate(ids) if (example_id, content_hash(texts[i])) not in delivered]
    if not fresh:
        return {}
    # Each candidate's own entry in the memory (-1: none). An id's earlier content is what it
    # replaces, not what it duplicates, so that entry is left out of its comparison.
    position = {example_id: k for k, example_id in enumerate(memory.ids)}
    own = np.array([position.get(ids[i], -1) for i in fresh], dtype=np.int64)
    best = np.full(len(fresh), -2.0, dtype=np.float32)
    best_at = np.zeros(len(fresh), dtype=np.int64)
    for low in range(0, len(fresh), CHUNK):
        q = np.ascontiguousarray(vectors[fresh[low : low + CHUNK]], dtype=np.float32)
        mine = own[low : low + CHUNK]
        rows = np.arange(len(q))
        for start in range(0, len(memory), CHUNK):
            block = memory.vectors[start : start + CHUNK]
            sims = q @ block.T
            inside = (mine >= start) & (mine < start + len(block))
            sims[rows[inside], mine[inside] - start] = -2.0
            top = sims.argmax(axis=1)
            values = sims[rows, top]
            better = values > best[low : low + CHUNK]
            best[low : low + CHUNK][better] = values[better]
            best_at[low : low + CHUNK][better] = top[better] + start
    return {
        fresh[k]: (memory.ids[int(best_at[k])], float(best[k]))
        for k in range(len(fresh))
        if best[k] >= threshold
    }
