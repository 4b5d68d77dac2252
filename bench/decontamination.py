"""``make bench-decon``: the decontamination index at 10,000 and 100,000 generated rows against
10,000 eval rows, next to a plain Python n-gram set (the obvious implementation) in the same run.

Texts are real human writing: paragraphs of the standard library's Python sources (code,
docstrings, comments), shuffled into rows of about 60 words; eval rows are drawn from a disjoint
part, and 1% of the generated rows get a 20-word span copied from an eval row (the planted leaks
every method must find). The last lines are::

    decon_index_10k_s, decon_index_100k_s      build + query seconds
    decon_100k_vs_10k                          (10 is linear)
    decon_set_10k_s                            the Python set baseline at 10k rows
    decon_index_vs_set_10k                     index / baseline (below 1 is faster)
    decon_index_vs_set_memory_10k              peak traced memory, index / baseline
    decon_recall                               planted leaks found (must be 1.0)
"""

from __future__ import annotations

import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from synth_pipelines.validation.decontamination import NgramIndex, words

N = 13


def corpus() -> list[list[str]]:
    """Rows of about 60 words of the standard library's own text."""
    root = Path(sys.modules["json"].__file__ or "").parent.parent
    tokens: list[str] = []
    for path in sorted(root.glob("*.py"))[:400]:
        tokens.extend(words(path.read_text(errors="ignore")))
    return [tokens[i : i + 60] for i in range(0, len(tokens) - 60, 60)]


def rows(pool: list[list[str]], count: int, rng: random.Random) -> list[list[str]]:
    return [pool[rng.randrange(len(pool))] for _ in range(count)]


def plant(generated: list[list[str]], eval_rows: list[list[str]], rng: random.Random) -> set[int]:
    planted = set(rng.sample(range(len(generated)), len(generated) // 100))
    for i in planted:
        source = eval_rows[rng.randrange(len(eval_rows))]
        generated[i] = generated[i][:20] + source[10:30] + generated[i][20:]
    return planted


def with_index(eval_texts: list[str], texts: list[str]) -> tuple[float, set[int]]:
    started = time.perf_counter()
    index = NgramIndex(N, 8)
    index.add("eval", eval_texts)
    found = index.find(texts)
    return time.perf_counter() - started, {i for i, f in enumerate(found) if f is not None}


def with_python_set(eval_texts: list[str], texts: list[str]) -> tuple[float, set[int]]:
    started = time.perf_counter()
    grams: set[tuple[str, ...]] = set()
    for text in eval_texts:
        w = words(text)
        grams.update(tuple(w[i : i + N]) for i in range(len(w) - N + 1))
    hits = set()
    for k, text in enumerate(texts):
        w = words(text)
        if any(tuple(w[i : i + N]) in grams for i in range(len(w) - N + 1)):
            hits.add(k)
    return time.perf_counter() - started, hits


def peak_mb(method: Callable[[list[str], list[str]], object], *args: list[str]) -> float:
    """The peak of memory allocated while ``method`` runs (Python objects and numpy arrays)."""
    tracemalloc.start()
    method(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1e6


def main() -> None:
    rng = random.Random(0)
    pool = corpus()
    rng.shuffle(pool)
    eval_pool, generated_pool = pool[: len(pool) // 3], pool[len(pool) // 3 :]
    eval_texts = [" ".join(r) for r in rows(eval_pool, 10_000, rng)]
    eval_rows = [words(t) for t in eval_texts]
    figures: dict[str, float] = {}
    recall = 1.0
    for count in (10_000, 100_000):
        generated = rows(generated_pool, count, rng)
        planted = plant(generated, eval_rows, rng)
        texts = [" ".join(r) for r in generated]
        seconds, found = with_index(eval_texts, texts)
        figures[f"decon_index_{count // 1000}k_s"] = seconds
        recall = min(recall, len(planted & found) / len(planted))
        print(
            f"{count} rows: index {seconds:.2f} s, {len(found)} overlapping ({len(planted)} planted)",
            flush=True,
        )
        if count == 10_000:
            base_s, base_found = with_python_set(eval_texts, texts)
            figures["decon_set_10k_s"] = base_s
            assert base_found == found, "the index and the plain set disagree"
            print(f"{count} rows: python set {base_s:.2f} s, the same {len(base_found)} rows", flush=True)
            figures["decon_index_10k_peak_mb"] = peak_mb(with_index, eval_texts, texts)
            figures["decon_set_10k_peak_mb"] = peak_mb(with_python_set, eval_texts, texts)
    print()
    for key, value in figures.items():
        print(f"{key}={value:.2f}")
    print(f"decon_100k_vs_10k={figures['decon_index_100k_s'] / figures['decon_index_10k_s']:.2f}")
    print(f"decon_index_vs_set_10k={figures['decon_index_10k_s'] / figures['decon_set_10k_s']:.2f}")
    memory = figures["decon_index_10k_peak_mb"] / figures["decon_set_10k_peak_mb"]
    print(f"decon_index_vs_set_memory_10k={memory:.2f}")
    print(f"decon_recall={recall:.3f}")


if __name__ == "__main__":
    main()
