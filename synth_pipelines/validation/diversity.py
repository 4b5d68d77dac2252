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
