"""Diversity statistics over a domain's embeddings: mean pairwise cosine distance (O(n·d), no n x n
matrix), distinct-n, and semantic clusters. The embeddings come from ``llm.embeddings``."""

from __future__ import annotations

import numpy as np


def mean_pairwise_cosine_distance(unit_vectors: np.ndarray) -> float | None:
    """Mean of 1 - cos(a, b) over all unordered pairs, in O(n·d) via the sum vector.

    For unit vectors, sum_{i != j} cos = ||sum x||^2 - n, so no n x n matrix is built.
    """
    n = unit_vectors.shape[0]
    if n < 2:
        return None
    s = unit_vectors.sum(axis=0, dtype=np.float64)
    mean_cos = (float(s @ s) - n) / (n * (n - 1))
    return 1.0 - mean_cos


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams / total n-grams over all texts (1.0 = no n-gram repeats)."""
    total = 0
    seen: set[tuple[str, ...]] = set()
    for t in texts:
        words = t.lower().split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def diversity_stats(
    unit_vectors: np.ndarray, texts: list[str], *, cluster_threshold: float = 0.85
) -> dict[str, float | int | None]:
    """Mean pairwise cosine distance, distinct-1/2, and the number of semantic clusters (groups of
    examples linked by cosine >= ``cluster_threshold``)."""
    from synth_pipelines.validation.dedup import embedding_clusters

    clusters = embedding_clusters(unit_vectors, threshold=cluster_threshold)
    n = int(unit_vectors.shape[0])
    return {
        "n": n,
        "mean_pairwise_cosine_distance": mean_pairwise_cosine_distance(unit_vectors),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "clusters": clusters.n_clusters,
        "cluster_ratio": clusters.n_clusters / n if n else None,
        "cluster_threshold": cluster_threshold,
    }


def similarity_sample(
    unit_vectors: np.ndarray, *, max_pairs: int = 20_000, seed: int = 0
) -> tuple[np.ndarray, int, bool]:
    """Cosine similarities for a histogram: every pair when there are at most ``max_pairs``, else
    ``max_pairs`` distinct random pairs (deterministic by ``seed``). Returns (similarities, pairs,
    exact) so that metadata can say which it is. Memory is O(max_pairs), never n x n."""
    n = unit_vectors.shape[0]
    total = n * (n - 1) // 2
    if total == 0:
        return np.zeros(0, dtype=np.float32), 0, True
    if total <= max_pairs:
        left, right = np.triu_indices(n, 1)
        exact = True
    else:
        rng = np.random.default_rng(seed)
        left = rng.integers(0, n, size=max_pairs * 2)
        right = rng.integers(0, n - 1, size=max_pairs * 2)
        right = right + (right >= left)  # never a row with itself
        # Distinct pairs, then a random subset (unique() sorts: taking its head would favour low rows).
        pairs = rng.permutation(np.unique(np.minimum(left, right) * n + np.maximum(left, right)))[:max_pairs]
        left, right = pairs // n, pairs % n
        exact = False
    sims = np.einsum("ij,ij->i", unit_vectors[left], unit_vectors[right])
    return sims, len(sims), exact
