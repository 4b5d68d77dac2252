"""The domain's memory: new examples are deduplicated against what earlier runs accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest

from synth_pipelines.validation import memory as memory_module
from synth_pipelines.validation.memory import Memory, load_memory, memory_duplicates, remember
from synth_pipelines.warehouse.storage import Warehouse
from synth_pipelines.warehouse.tables import EMBEDDING_DIM
from tests.materialize import DOMAIN, materialize_domain, up_to

content_hash = memory_module.content_hash


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, EMBEDDING_DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_memory_duplicates_flags_only_new_ids_close_to_a_remembered_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory_module, "CHUNK", 3)  # the best match must survive chunking
    rng = np.random.default_rng(0)
    remembered = unit(rng, 10)
    memory = Memory([f"m{i}" for i in range(10)], remembered, [content_hash(f"text {i}") for i in range(10)])
    near = remembered[7] + 0.05 * unit(rng, 1)[0]
    near /= np.linalg.norm(near)
    far = unit(rng, 1)[0]
    candidates = np.stack([remembered[2], near, far, remembered[7]])
    ids = ["m2", "new-near", "new-far", "new-copy"]
    texts = ["text 2", "near", "far", "text 7"]
    found = memory_duplicates(ids, candidates, memory, threshold=0.95, texts=texts)
    assert set(found) == {1, 3}  # m2 is the remembered example itself: it passes
    assert found[1][0] == "m7" and 0.95 <= found[1][1] < 1.0
    assert found[3] == ("m7", pytest.approx(1.0, abs=1e-5))
    empty = Memory([], np.zeros((0, EMBEDDING_DIM), np.float32), [])
    assert memory_duplicates(ids, candidates, empty, 0.95, texts=texts) == {}


def test_memory_duplicates_chunked_on_both_sides_match_every_pair_compared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # New examples are compared a chunk at a time too (4096 x 4096 at most, not 4096 x all of
    # them: 1.6 GB at 100,000): each one's best match must be the one over every remembered row.
    monkeypatch.setattr(memory_module, "CHUNK", 4)
    rng = np.random.default_rng(3)
    remembered = unit(rng, 23)
    memory = Memory([f"m{i}" for i in range(23)], remembered, [content_hash(f"old {i}") for i in range(23)])
    noisy = remembered[rng.integers(0, 23, size=30)] + 0.01 * rng.normal(size=(30, EMBEDDING_DIM))
    candidates = np.concatenate([noisy / np.linalg.norm(noisy, axis=1, keepdims=True), unit(rng, 11)])
    ids = [f"m{i}" if i % 4 == 0 else f"n{i}" for i in range(len(candidates))]  # some reuse an id
    texts = [f"new {i}" for i in range(len(candidates))]
    found = memory_duplicates(ids, candidates.astype(np.float32), memory, threshold=0.9, texts=texts)
    sims = candidates @ remembered.T
    for i, example_id in enumerate(ids):
        if example_id in memory.ids:  # its own earlier content is not a duplicate of it
            sims[i, memory.ids.index(example_id)] = -2.0
    expected = {i: f"m{int(sims[i].argmax())}" for i in range(len(ids)) if sims[i].max() >= 0.9}
    assert len(expected) >= 15
    assert {i: match for i, (match, _) in found.items()} == expected
    assert all(abs(found[i][1] - sims[i].max()) < 1e-5 for i in found)


def test_memory_duplicates_hold_one_chunk_by_chunk_block_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    monkeypatch.setattr(memory_module, "CHUNK", 256)
    rng = np.random.default_rng(4)
    memory = Memory([f"m{i}" for i in range(512)], unit(rng, 512), [None] * 512)
    candidates = unit(rng, 8000)  # 12 MB of vectors; every one of them new
    ids, texts = [f"n{i}" for i in range(8000)], [f"t{i}" for i in range(8000)]
    tracemalloc.start()
    try:
        memory_duplicates(ids, candidates, memory, threshold=0.99, texts=texts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # 256 x 256 similarities and 256 query vectors at a time, plus per-candidate bookkeeping; the
    # query side unchunked was 8000 x 256 floats and a copy of every candidate (~20 MB).
    assert peak < 6_000_000, peak


def test_a_remembered_id_with_new_content_that_copies_another_is_a_duplicate() -> None:
    """Memory is keyed by content: an id the memory knows passes only with the content it was
    accepted with. Regenerated under an old id, a copy of another remembered example is caught,
    while its own old content (which it replaces) never counts against it."""
    rng = np.random.default_rng(3)
    remembered = unit(rng, 4)
    memory = Memory([f"m{i}" for i in range(4)], remembered, [content_hash(f"text {i}") for i in range(4)])
    # m1 regenerated: now the content of m3 (copied), and m2 regenerated close to its own old self.
    own_drift = remembered[2] + 0.02 * unit(rng, 1)[0]
    own_drift /= np.linalg.norm(own_drift)
    candidates = np.stack([remembered[3], own_drift, remembered[0]])
    found = memory_duplicates(
        ["m1", "m2", "m0"], candidates, memory, threshold=0.95, texts=["text 3", "text 2 v2", "text 0"]
    )
    assert found == {0: ("m3", pytest.approx(1.0, abs=1e-5))}


def test_remember_appends_unseen_content_and_keeps_each_ids_latest(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    rng = np.random.default_rng(1)
    vectors = unit(rng, 3)
    h = {name: content_hash(name) for name in ("a", "b", "c", "d", "b2")}
    assert remember(wh, DOMAIN, ["a", "b", "c"], vectors, hashes=[h["a"], h["b"], h["c"]],
                    spec_version="v1", remembered_at="t1") == 3  # fmt: skip
    more = unit(rng, 2)
    assert (
        remember(wh, DOMAIN, ["b", "d"], more, hashes=[h["b"], h["d"]], spec_version="v1", remembered_at="t2")
        == 1
    )
    memory = load_memory(wh, DOMAIN)
    assert sorted(memory.ids) == ["a", "b", "c", "d"]
    b = memory.ids.index("b")
    assert np.allclose(memory.vectors[b], vectors[1]) and memory.hashes[b] == h["b"]
    # b's content changed: remembered again, and the memory now holds the new content for b.
    changed = unit(rng, 1)
    assert remember(wh, DOMAIN, ["b"], changed, hashes=[h["b2"]], spec_version="v2", remembered_at="t3") == 1
    memory = load_memory(wh, DOMAIN)
    b = memory.ids.index("b")
    assert sorted(memory.ids) == ["a", "b", "c", "d"]
    assert np.allclose(memory.vectors[b], changed[0]) and memory.hashes[b] == h["b2"]
    assert len(load_memory(wh, "data_analysis")) == 0


def test_rerun_keeps_its_examples_and_rejects_paraphrases_of_remembered_ones(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends: Any
) -> None:
    """Run 1 accepts and remembers its examples; its rerun (same ids, from the cache) accepts the
    same set. When the memory holds the same content under other ids (an earlier run's examples),
    the new rows are memory duplicates naming the remembered example, and nothing else is lost."""
    warehouse = tmp_path / "warehouse"
    assets = up_to("example_embeddings")  # through example_embeddings (which remembers)
    materialize_domain(assets, warehouse, scripted_schemas_dir, target=10)
    wh = Warehouse(warehouse)
    first = wh.read_partition("validated_examples", DOMAIN)
    assert first is not None and first.num_rows > 0
    memory = load_memory(wh, DOMAIN)
    assert sorted(memory.ids) == sorted(first.column("example_id").to_pylist())

    materialize_domain(assets, warehouse, scripted_schemas_dir, target=10)
    again = wh.read_partition("validated_examples", DOMAIN)
    assert sorted(again.column("example_id").to_pylist()) == sorted(first.column("example_id").to_pylist())

    # An earlier run's examples: the same content under other ids.
    other = tmp_path / "other"
    materialize_domain(assets, other, scripted_schemas_dir, target=10)
    theirs = load_memory(Warehouse(other), DOMAIN)
    fresh = tmp_path / "fresh"
    remember(
        Warehouse(fresh), DOMAIN, [f"earlier-{i}" for i in theirs.ids], theirs.vectors,
        hashes=list(theirs.hashes or []), spec_version="v0", remembered_at="2026-01-01T00:00:00+00:00",
    )  # fmt: skip
    materialize_domain(up_to("validated_examples"), fresh, scripted_schemas_dir, target=10)
    rejected = Warehouse(fresh).read_partition("rejected_examples", DOMAIN)
    duplicates = rejected.filter(pc.equal(rejected.column("fail_stage"), "memory_duplicate"))
    assert duplicates.num_rows == first.num_rows
    reasons = [r[0] for r in duplicates.column("fail_reasons").to_pylist()]
    assert all(r.startswith("near duplicate of earlier accepted example earlier-") for r in reasons)
    accepted = Warehouse(fresh).read_partition("validated_examples", DOMAIN)
    assert accepted.num_rows == 0
    # Off: the memory is not consulted.
    import yaml

    spec_path = scripted_schemas_dir / f"{DOMAIN}.yaml"
    data = yaml.safe_load(spec_path.read_text())
    data["validation"]["memory_duplicate_threshold"] = None
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    materialize_domain(up_to("validated_examples"), fresh, scripted_schemas_dir, target=10)
    accepted = Warehouse(fresh).read_partition("validated_examples", DOMAIN)
    assert accepted.num_rows == first.num_rows
    assert json.loads(accepted.column("example_json")[0].as_py())
