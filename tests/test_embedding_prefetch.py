"""Embeddings computed while generation waits on the network (issue 25: overlap)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from synth_pipelines.llm.embedding_prefetch import EmbeddingPrefetcher


def _recording(delay_s: float = 0.0, gate: threading.Event | None = None):  # type: ignore[no-untyped-def]
    batches: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        if gate is not None:
            gate.wait(10)
        time.sleep(delay_s)
        batches.append(list(texts))
        return np.zeros((len(texts), 384), dtype=np.float32)

    return embed, batches


def test_submitted_texts_are_embedded_once_in_bounded_batches() -> None:
    embed, batches = _recording()
    prefetch = EmbeddingPrefetcher(embed, batch=4).start()
    prefetch.submit([f"text {i}" for i in range(10)])
    prefetch.submit(["text 3", "", "text 10"])  # a repeat and an empty text are not queued again
    prefetch.close(drain_s=10)
    flat = [t for b in batches for t in b]
    assert sorted(flat) == sorted(f"text {i}" for i in range(11))
    assert max(len(b) for b in batches) <= 4
    assert prefetch.stats()["embedded"] == 11 and prefetch.stats()["left_for_later"] == 0


def test_submit_never_blocks_and_a_full_queue_drops() -> None:
    gate = threading.Event()  # the worker is stuck in its first batch
    embed, _ = _recording(gate=gate)
    prefetch = EmbeddingPrefetcher(embed, batch=1, max_pending=5).start()
    started = time.perf_counter()
    prefetch.submit([f"t{i}" for i in range(100)])
    assert time.perf_counter() - started < 0.5
    stats = prefetch.stats()
    assert stats["dropped_queue_full"] >= 100 - 5 - 1
    assert stats["submitted"] + stats["dropped_queue_full"] == 100
    gate.set()
    prefetch.close()


def test_the_queue_is_bounded_by_characters_too() -> None:
    """Long texts fill the queue's character budget before its count: what is over it is dropped
    (embedded later), and what the worker takes frees the budget again."""
    gate = threading.Event()
    embed, _ = _recording(gate=gate)
    prefetch = EmbeddingPrefetcher(embed, batch=1, max_pending=1_000, max_pending_chars=10_000).start()
    prefetch.submit([f"{i:04d}" + "x" * 996 for i in range(30)])  # 1,000 characters each
    stats = prefetch.stats()
    # The worker holds at most one text outside the queue while it waits on the gate.
    assert 10 <= stats["submitted"] <= 11 and stats["submitted"] + stats["dropped_queue_full"] == 30
    gate.set()
    prefetch.close(drain_s=10)
    assert prefetch.stats()["embedded"] == stats["submitted"]
    later = EmbeddingPrefetcher(embed, batch=1, max_pending_chars=10_000).start()
    for chunk in range(3):  # three budgets' worth, one after another: each fits once the last is taken
        later.submit([f"{chunk}{i:03d}" + "y" * 996 for i in range(10)])
        deadline = time.monotonic() + 10
        while later.stats()["embedded"] < 10 * (chunk + 1) and time.monotonic() < deadline:
            time.sleep(0.01)
    later.close()
    assert later.stats()["embedded"] == 30 and later.stats()["dropped_queue_full"] == 0


def test_close_does_not_wait_for_the_queue() -> None:
    embed, batches = _recording(delay_s=0.2)
    prefetch = EmbeddingPrefetcher(embed, batch=2).start()
    prefetch.submit([f"t{i}" for i in range(40)])  # 20 batches of 0.2 s = 4 s of work
    time.sleep(0.05)
    started = time.perf_counter()
    prefetch.close()
    assert time.perf_counter() - started < 1.0  # the batch in progress, not the queue
    assert prefetch.stats()["left_for_later"] >= 30
    assert len(batches) <= 3
    prefetch.submit(["after close"])  # ignored, never raises
    assert prefetch.stats()["submitted"] == 40


def test_an_embedding_error_is_recorded_never_raised() -> None:
    def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("model file missing")

    prefetch = EmbeddingPrefetcher(broken).start()
    prefetch.submit(["a", "b"])
    prefetch.close(drain_s=2)
    assert "model file missing" in prefetch.stats()["error"]
    assert prefetch.stats()["embedded"] == 0


def test_generation_prefetches_exactly_what_validation_and_embeddings_look_up(
    tmp_path: Path, schemas_dir: Path
) -> None:
    """The prefetched vectors sit in the embedding cache under the keys the later assets compute:
    each good row's example text (as validation parses it), its problem and its text fields."""
    from synth_pipelines.generation.generate_rows import generate_examples, iter_plan_items
    from synth_pipelines.generation.matrix import build_matrix
    from synth_pipelines.generation.seeds import build_seed_problems
    from synth_pipelines.llm.client import LLMClient
    from synth_pipelines.llm.embeddings import (
        DEFAULT_BACKEND,
        EmbeddingCache,
        bundled_model_dir,
        cache_identity,
    )
    from synth_pipelines.resources import EmbedderResource
    from synth_pipelines.spec.loading import load_spec
    from synth_pipelines.spec.text import example_text
    from synth_pipelines.validation.apply_gates import embedded_texts
    from synth_pipelines.validation.consistency import field_texts
    from synth_pipelines.validation.rule_checks import rule_check
    from synth_pipelines.warehouse.inflight import InflightRows
    from synth_pipelines.warehouse.tables import RAW_GENERATIONS
    from tests.scripted import ScriptedBackend, scripted_profile

    loaded = load_spec(schemas_dir / "api_development.yaml").spec
    # As domain_schema stores it: thresholds resolved, both embedding gates on.
    spec = loaded.model_copy(
        update={
            "validation": loaded.validation.model_copy(
                update={"on_topic_threshold": 0.1, "field_agreement_threshold": 0.1}
            )
        }
    )
    seeds, _ = build_seed_problems(spec, None)
    cells = build_matrix(spec, [(s.seed_id, s.problem) for s in seeds], target_count=6)
    backends = {n: ScriptedBackend(n) for n in ("gen-a", "gen-b", "judge-a", "judge-b")}
    sink = InflightRows(tmp_path / "inflight", RAW_GENERATIONS)
    cache_path = tmp_path / "embeddings.sqlite"
    embedder = EmbedderResource()
    prefetch = embedder.prefetcher(cache_path).start()
    generate_examples(
        spec,
        iter_plan_items(cells, seeds, spec.domain),
        LLMClient(scripted_profile(), backends, None),
        sink,
        planned=6,
        on_example=lambda example, problem: prefetch.submit(embedded_texts(spec, example, problem)),
    )
    prefetch.close(drain_s=120)
    rows = sink.read_columns(["status", "example_json", "problem"]).to_pylist()
    good = [r for r in rows if r["status"] == "ok"]
    assert good, "the scripted generator produced no good row"
    wanted = {r["problem"] for r in good}
    for r in good:
        example, _ = rule_check(spec, r["example_json"], prompt_text=r["problem"])
        assert example is not None
        wanted.add(example_text(example))
        wanted.update(field_texts(example).values())
    identity = cache_identity(bundled_model_dir(), DEFAULT_BACKEND)
    found = EmbeddingCache(cache_path).get_many(EmbeddingCache.keys(sorted(wanted), identity))
    assert len(found) == len(wanted) == prefetch.stats()["embedded"]


def test_only_what_the_cache_lacks_is_worth_prefetching(tmp_path: Path) -> None:
    """Validation hands the prefetcher only uncached texts: a queue filled with texts embedded
    during generation would drop the ones still missing (the 100,000-row run did)."""
    from synth_pipelines.llm.embeddings import (
        DEFAULT_BACKEND,
        EmbeddingCache,
        bundled_model_dir,
        cache_identity,
        uncached_texts,
    )

    path = tmp_path / "embeddings.sqlite"
    assert uncached_texts(["a", "b", "a"], path) == ["a", "b"]  # no cache file yet: all, distinct
    cache = EmbeddingCache(path)
    held = [f"held {i}" for i in range(1200)]  # more than one SQL batch of keys
    cache.put_many(
        EmbeddingCache.keys(held, cache_identity(bundled_model_dir(), DEFAULT_BACKEND)),
        np.zeros((len(held), 384), dtype=np.float32),
    )
    texts = ["new 1", *held[::7], "new 2", "new 1", held[-1]]
    assert uncached_texts(texts, path) == ["new 1", "new 2"]
    other = "torch" if DEFAULT_BACKEND != "torch" else "onnx"
    assert uncached_texts(texts, path, backend=other) == list(dict.fromkeys(texts))  # another backend


def test_texts_already_embedded_are_not_kept_alive() -> None:
    """The prefetcher remembers what it was given to skip repeats, but not the texts themselves: at
    100,000 rows those were several hundred MB held until the asset ended (issue 25, peak RSS)."""
    import tracemalloc

    def embed(texts: list[str]) -> np.ndarray:  # keeps nothing
        return np.zeros((len(texts), 4), dtype=np.float32)

    prefetch = EmbeddingPrefetcher(embed, batch=512).start()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        texts = [f"{i:06d} " + "word " * 200 for i in range(20_000)]  # ~20 MB of text
        prefetch.submit(texts)
        prefetch.close(drain_s=30)
        assert prefetch.stats()["embedded"] == 20_000
        del texts
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 4_000_000, retained
    prefetch2 = EmbeddingPrefetcher(embed).start()
    prefetch2.submit(["a", "a", "b"])
    prefetch2.close(drain_s=10)
    assert prefetch2.stats()["submitted"] == 2  # repeats are still skipped
