"""Dedup and diversity at 10k and 100k synthetic rows: does the cost grow linearly?

Times near-duplicate clustering (MinHash LSH on text), semantic clustering (SimHash LSH on 384-d
embeddings), mean pairwise cosine distance and distinct-n at both sizes, and reports the time ratio
100k / 10k for each (10 = linear; an O(n^2) step would show ~100).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np

from synth_pipelines.validation.dedup import embedding_clusters, near_duplicate_clusters
from synth_pipelines.validation.diversity import distinct_n, mean_pairwise_cosine_distance


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20_000)]
    texts: list[str] = []
    for i in range(n):
        if i % 20 == 19:  # 5% near duplicates of the previous row
            words = texts[-1].split()
            words[rng.randrange(len(words))] = "edited"
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(25, 60))))
    return texts


def synthetic_vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 384)).astype(np.float32)
    v[1::20] = v[0::20][: len(v[1::20])] + 0.01 * rng.standard_normal((len(v[1::20]), 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    sizes = (10_000, 100_000)
    data = {n: (synthetic_texts(n), synthetic_vectors(n)) for n in sizes}
    steps: dict[str, Callable[[list[str], np.ndarray], object]] = {
        "near-duplicate clusters (MinHash LSH)": lambda t, v: near_duplicate_clusters(t, threshold=0.8),
        "semantic clusters (SimHash LSH)": lambda t, v: embedding_clusters(v, threshold=0.85),
        "mean pairwise cosine distance": lambda t, v: mean_pairwise_cosine_distance(v),
        "distinct-2": lambda t, v: distinct_n(t, 2),
    }
    results: dict[str, dict[int, float]] = {}
    for name, step in steps.items():
        results[name] = {n: timed(lambda n=n, step=step: step(*data[n])) for n in sizes}
    found = near_duplicate_clusters(data[100_000][0], threshold=0.8)
    total = {n: sum(r[n] for r in results.values()) for n in sizes}
    print(f"{'step':<40} {'10k s':>8} {'100k s':>8} {'ratio':>7}")
    for name, r in results.items():
        print(f"{name:<40} {r[10_000]:>8.2f} {r[100_000]:>8.2f} {r[100_000] / max(r[10_000], 1e-9):>7.1f}")
    print(
        f"{'total':<40} {total[10_000]:>8.2f} {total[100_000]:>8.2f} {total[100_000] / total[10_000]:>7.1f}"
    )
    print(f"near-duplicate pairs found at 100k: {found.pairs} (planted: {100_000 // 20})")
    print(f"time_ratio_100k_over_10k={total[100_000] / total[10_000]:.2f}")


if __name__ == "__main__":
    main()
