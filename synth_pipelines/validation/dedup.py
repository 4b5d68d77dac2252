"""Near-duplicate detection and clustering, vectorized so 100,000 examples take seconds, not hours.

* Text: MinHash signatures over word 3-shingles (numpy, batched), or over character 3-grams for a
  text shorter than three words (so that short values such as ``method: GET`` and ``method: POST``
  stay apart), + LSH banding to find candidate pairs, verified by the estimated Jaccard similarity.
* Embeddings: random-hyperplane (SimHash) banding to find candidate pairs, verified by cosine.

Dedup keeps rows greedily, best score first: a row is dropped only when a row already kept is a
near duplicate of it. So no two kept rows are near duplicates, and every dropped row names a kept
one that it is near (single-linkage clusters would chain A~B~C and drop C for A, which it is not
near). Cluster counts for diversity statistics still use connected components. Nothing builds an
n x n matrix.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")
_MASK32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class Clusters:
    """``labels[i]`` is the cluster of row i; ``pairs`` counts the verified similar pairs."""

    labels: np.ndarray
    n_clusters: int
    pairs: int


def choose_bands(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) with bands*rows == num_perm whose S-curve midpoint is closest to ``threshold``."""
    best = (num_perm, 1)
    best_err = float("inf")
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        err = abs((1 / bands) ** (1 / rows) - threshold)
        if err < best_err:
            best, best_err = (bands, rows), err
    return best


def _batch_shingles(token_ids: np.ndarray, lengths: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of a batch of documents, concatenated, and how many each document has.

    ``token_ids`` holds the documents' word ids back to back. A document shorter than ``k`` words
    gets one shingle (its first word id, or 0 when empty) so that it still has a signature.
    """
    n_tokens = len(token_ids)
    rolled = np.zeros(max(n_tokens - k + 1, 0), dtype=np.uint64)
    for j in range(k):  # polynomial combination of k consecutive word ids, for every position
        rolled = rolled * np.uint64(1_000_003) + token_ids[j : n_tokens - k + 1 + j]
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    counts = np.maximum(lengths - k + 1, 0)
    short = counts == 0
    counts_out = np.where(short, 1, counts)
    total = int(counts_out.sum())
    first_of_doc = np.concatenate(([0], np.cumsum(counts_out)[:-1]))
    within = np.arange(total) - np.repeat(first_of_doc, counts_out)
    positions = np.repeat(starts, counts_out) + within
    out = np.empty(total, dtype=np.uint64)
    long_mask = ~np.repeat(short, counts_out)
    if long_mask.any():
        out[long_mask] = rolled[positions[long_mask]]
    if short.any():
        short_pos = first_of_doc[short]
        short_starts = starts[short]
        has_token = lengths[short] > 0
        vals = np.zeros(int(short.sum()), dtype=np.uint64)
        vals[has_token] = token_ids[short_starts[has_token]]
        out[short_pos] = vals
    return out & _MASK32, counts_out


def _document_tokens(text: str, shingle: int) -> tuple[list[str], int]:
    """A document's units for shingling and the shingle size to use on them: its words, or for a
    text with fewer than ``shingle`` words its character 3-grams (tagged so they never meet a word)."""
    words = _WORD.findall(text.lower())
    if len(words) >= shingle:
        return words, shingle
    joined = " ".join(words)
    if len(joined) <= 3:
        return ([f"\x00{joined}"] if joined else []), 1
    return [f"\x00{joined[i : i + 3]}" for i in range(len(joined) - 2)], 1


# What one pass holds at most, whatever the texts' length: the characters tokenized at once (the
# tokens are Python strings, ~60 bytes each) and the shingles hashed at once (num_perm x shingles
# uint64s: 32 MB at 128 permutations). Fixed document counts let long human texts (code, logs)
# take gigabytes in one batch.
_BATCH_CHARS = 2_000_000
_PASS_SHINGLES = 1 << 15


def _text_batches(texts: list[str], max_chars: int) -> Iterable[tuple[int, list[str]]]:
    """``texts`` in consecutive batches of at most ``max_chars`` characters (a longer text alone),
    each with the index of its first text."""
    start, size = 0, 0
    for end, text in enumerate(texts):
        if size and size + len(text) > max_chars:
            yield start, texts[start:end]
            start, size = end, 0
        size += len(text)
    if start < len(texts):
        yield start, texts[start:]


def _min_hashes_into(
    out: np.ndarray,
    rows: np.ndarray,
    shingles: np.ndarray,
    counts: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    max_shingles: int,
) -> None:
    """``out[rows[d]]`` lowered to the minimum permuted hash over document d's shingles (documents'
    shingles are consecutive in ``shingles``, ``counts[d]`` >= 1 each), ``max_shingles`` at a time:
    a document split across passes is combined by the running minimum."""
    offsets = np.concatenate(([0], np.cumsum(counts)))
    for lo in range(0, len(shingles), max_shingles):
        hi = min(lo + max_shingles, len(shingles))
        first = int(np.searchsorted(offsets, lo, side="right")) - 1
        last = int(np.searchsorted(offsets, hi, side="left"))
        # (permutations x shingles), computed in place and reduced along contiguous rows: ~10x
        # faster than the transposed layout with temporaries.
        permuted = a[:, None] * shingles[None, lo:hi]
        permuted += b[:, None]
        permuted >>= np.uint64(32)
        starts = np.maximum(offsets[first:last], lo) - lo
        narrowed = permuted.astype(np.uint32)
        del permuted  # before the next pass allocates its own
        reduced = np.minimum.reduceat(narrowed, starts, axis=1).T
        target = rows[first:last]
        out[target] = np.minimum(out[target], reduced)


def minhash_signatures(
    texts: list[str],
    *,
    num_perm: int = 128,
    shingle: int = 3,
    seed: int = 1,
    batch_chars: int = _BATCH_CHARS,
    pass_shingles: int = _PASS_SHINGLES,
) -> np.ndarray:
    """MinHash signatures, shape (n, num_perm), uint32: over word ``shingle``-grams, or character
    3-grams for texts shorter than ``shingle`` words. An empty text gets the all-maximum signature.
    Memory is bounded by ``batch_chars`` and ``pass_shingles``, not by the texts' count or length;
    the signatures do not depend on either."""
    rng = np.random.default_rng(seed)
    # Multiply-shift hashing ((a*h + b) mod 2^64) >> 32 with odd a: a universal family that needs
    # no modulo, which is the slow part of the classic (a*h + b) mod p.
    a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    vocab: dict[str, int] = {}
    out = np.full((len(texts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    for start, batch in _text_batches(texts, batch_chars):
        docs = [_document_tokens(t, shingle) for t in batch]
        for size in sorted({k for _, k in docs}):  # character grams, then word shingles, vectorized
            rows = [i for i, (tokens, k) in enumerate(docs) if k == size and tokens]
            if not rows:
                continue
            tokens = [docs[i][0] for i in rows]
            lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
            flat = list(itertools.chain.from_iterable(tokens))
            for w in flat:
                if w not in vocab:
                    vocab[w] = len(vocab) + 1
            ids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.uint64, count=len(flat))
            shingles, counts = _batch_shingles(ids, lengths, size)
            _min_hashes_into(out, start + np.asarray(rows), shingles, counts, a, b, pass_shingles)
    return out


def _band_candidate_pairs(band_keys: np.ndarray, *, max_group: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Rows sharing a band key are candidate pairs.

    Small buckets yield all their pairs; a bucket larger than ``max_group`` (many copies of one
    thing) links every member to its first row instead, which keeps the pair count linear.
    """
    order = np.argsort(band_keys, kind="stable")
    keys = band_keys[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    sizes = np.diff(np.concatenate((starts, [len(keys)])))
    lefts: list[np.ndarray] = []
    rights: list[np.ndarray] = []
    big = sizes > max_group
    if big.any():
        group_of = np.repeat(starts, sizes)
        in_big = np.repeat(big, sizes)
        leaders = order[group_of]
        mask = in_big & (leaders != order)
        lefts.append(leaders[mask])
        rights.append(order[mask])
    for g in np.unique(sizes[(sizes >= 2) & ~big]):
        group_starts = starts[sizes == g]
        i, j = np.triu_indices(int(g), 1)
        lefts.append(order[(group_starts[:, None] + i[None, :]).ravel()])
        rights.append(order[(group_starts[:, None] + j[None, :]).ravel()])
    if not lefts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(lefts), np.concatenate(rights)


def _components(n: int, left: np.ndarray, right: np.ndarray) -> Clusters:
    if n == 0:
        return Clusters(labels=np.zeros(0, dtype=np.int64), n_clusters=0, pairs=0)
    # Imported here: scipy.sparse costs every process that loads the CLI or the assets ~0.4 s.
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n))
    n_clusters, labels = connected_components(graph, directed=False)
    return Clusters(labels=labels.astype(np.int64), n_clusters=int(n_clusters), pairs=len(left))


def _pair_keys(left: np.ndarray, right: np.ndarray, n: int) -> np.ndarray:
    """One sorted, unique int64 key per undirected pair (fast 1-D sort)."""
    lo, hi = np.minimum(left, right).astype(np.int64), np.maximum(left, right).astype(np.int64)
    return _sorted_unique(lo * n + hi)


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting: numpy 2's hash-based unique is ~30x slower on millions of int64s.
    The stable sort (timsort) merges already-sorted runs, such as two concatenated unique arrays,
    in about linear time."""
    keys = np.sort(keys, kind="stable")
    if len(keys) < 2:
        return keys
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))]


def _unique_band_pairs(bands: Iterable[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The unique candidate pairs over every band's row keys, merged band by band: memory follows
    the number of distinct pairs, not bands x pairs (the bands of similar rows repeat most pairs)."""
    keys = np.zeros(0, np.int64)
    for band_keys in bands:
        left, right = _band_candidate_pairs(band_keys)
        if len(left):
            keys = _sorted_unique(np.concatenate((keys, _pair_keys(left, right, n))))
    return keys // n, keys % n


def _hash_rows(block: np.ndarray) -> np.ndarray:
    """One uint64 key per row of a 2-D integer block (FNV-style mix; collisions only add candidates)."""
    key = np.full(block.shape[0], np.uint64(1469598103934665603), dtype=np.uint64)
    for col in range(block.shape[1]):
        key = (key ^ block[:, col].astype(np.uint64)) * np.uint64(1099511628211)
    return key


def near_duplicate_pairs(
    texts: list[str], *, threshold: float = 0.8, num_perm: int = 128, shingle: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (left, right), left < right, whose estimated Jaccard similarity is >= ``threshold``."""
    n = len(texts)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sig = minhash_signatures(texts, num_perm=num_perm, shingle=shingle)
    # Band for a lower similarity than we verify at: recall first, the exact check removes the rest.
    bands, rows = choose_bands(num_perm, max(0.05, threshold - 0.15))
    left, right = _unique_band_pairs(
        (_hash_rows(sig[:, band * rows : (band + 1) * rows]) for band in range(bands)), n
    )
    keep = _verified(left, right, lambda lo, hi: (sig[lo] == sig[hi]).mean(axis=1) >= threshold)
    return left[keep], right[keep]


# Pairs verified per step: the gathered rows of a step stay near 25 MB whatever the row count.
VERIFY_CHUNK = 8192


def _verified(
    left: np.ndarray, right: np.ndarray, check: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """``check`` over the pairs in bounded steps, as one boolean mask."""
    keep = np.zeros(len(left), dtype=bool)
    for start in range(0, len(left), VERIFY_CHUNK):
        sl = slice(start, start + VERIFY_CHUNK)
        keep[sl] = check(left[sl], right[sl])
    return keep


def near_duplicate_clusters(
    texts: list[str], *, threshold: float = 0.8, num_perm: int = 128, shingle: int = 3
) -> Clusters:
    """Clusters of texts linked by estimated Jaccard similarity >= ``threshold`` (for statistics)."""
    left, right = near_duplicate_pairs(texts, threshold=threshold, num_perm=num_perm, shingle=shingle)
    return _components(len(texts), left, right)


def embedding_clusters(
    unit_vectors: np.ndarray, *, threshold: float = 0.8, bits: int = 512, seed: int = 7
) -> Clusters:
    """Clusters of embeddings with cosine >= ``threshold``, found by SimHash banding (no n x n matrix;
    working memory beyond the n x bits sign matrix stays bounded, see ``VERIFY_CHUNK``)."""
    n = unit_vectors.shape[0]
    if n < 2:
        return _components(n, np.zeros(0, np.int64), np.zeros(0, np.int64))
    rng = np.random.default_rng(seed)
    planes = rng.standard_normal((unit_vectors.shape[1], bits)).astype(np.float32)
    signs = np.empty((n, bits), dtype=bool)
    for start in range(0, n, VERIFY_CHUNK):  # the float projections of one step at a time
        signs[start : start + VERIFY_CHUNK] = (unit_vectors[start : start + VERIFY_CHUNK] @ planes) > 0
    # Angle theta flips a bit with probability theta/pi; pick bands for the matching bit agreement.
    # Enough bits per band that a bucket holds ~a few rows by chance (2^rows >> n), as many bands as
    # the bits allow: recall for the threshold comes from the number of bands.
    rows = max(8, int(np.ceil(np.log2(n))) + 1)
    left, right = _unique_band_pairs(
        (_hash_rows(np.packbits(signs[:, b * rows : (b + 1) * rows], axis=1)) for b in range(bits // rows)), n
    )
    keep = _verified(
        left, right, lambda lo, hi: np.einsum("ij,ij->i", unit_vectors[lo], unit_vectors[hi]) >= threshold
    )
    return _components(n, left[keep], right[keep])


def near_duplicate_selection(
    texts: list[str], scores: list[float], *, threshold: float
) -> tuple[list[int], dict[int, int]]:
    """Which rows to keep when near duplicates collapse, and for every dropped row the kept row that
    replaced it.

    Greedy, best score first (ties: earlier row): a row is kept unless a row already kept is a near
    duplicate of it. Hence no two kept rows are near duplicates, and every dropped row is a near
    duplicate of the kept row named for it (the best-scored such row).
    """
    n = len(texts)
    left, right = near_duplicate_pairs(texts, threshold=threshold)
    # Adjacency in CSR form: neighbours of row i are nbr[start[i]:start[i + 1]].
    heads = np.concatenate((left, right))
    tails = np.concatenate((right, left))
    order = np.argsort(heads, kind="stable")
    nbr = tails[order]
    start = np.searchsorted(heads[order], np.arange(n + 1))
    kept = np.zeros(n, dtype=bool)
    replaced_by: dict[int, int] = {}
    rank = np.lexsort((np.arange(n), -np.asarray(scores, dtype=np.float64)))
    position = np.empty(n, dtype=np.int64)
    position[rank] = np.arange(n)
    for i in rank.tolist():
        neighbours = nbr[start[i] : start[i + 1]]
        winners = neighbours[kept[neighbours]]
        if len(winners):
            replaced_by[i] = int(winners[np.argmin(position[winners])])
        else:
            kept[i] = True
    return np.flatnonzero(kept).tolist(), replaced_by
