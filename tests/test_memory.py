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


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, EMBEDDING_DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_memory_duplicates_flags_only_new_ids_close_to_a_remembered_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory_module, "CHUNK", 3)  # the best match must survive chunking
    rng = np.random.default_rng(0)
    remembered = unit(rng, 10)
    memory = Memory([f"m{i}" for i in range(10)], remembered)
    near = remembered[7] + 0.05 * unit(rng, 1)[0]
    near /= np.linalg.norm(near)
    far = unit(rng, 1)[0]
    candidates = np.stack([remembered[2], near, far, remembered[7]])
    ids = ["m2", "new-near", "new-far", "new-copy"]
    found = memory_duplicates(ids, candidates, memory, threshold=0.95)
    assert set(found) == {1, 3}  # m2 is the remembered example itself: it passes
    assert found[1][0] == "m7" and 0.95 <= found[1][1] < 1.0
    assert found[3] == ("m7", pytest.approx(1.0, abs=1e-5))
    assert (
        memory_duplicates(ids, candidates, Memory([], np.zeros((0, EMBEDDING_DIM), np.float32)), 0.95) == {}
    )


def test_remember_appends_only_unseen_ids(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    rng = np.random.default_rng(1)
    vectors = unit(rng, 3)
    assert remember(wh, DOMAIN, ["a", "b", "c"], vectors, spec_version="v1", remembered_at="t1") == 3
    assert remember(wh, DOMAIN, ["b", "d"], unit(rng, 2), spec_version="v1", remembered_at="t2") == 1
    memory = load_memory(wh, DOMAIN)
    assert memory.ids == ["a", "b", "c", "d"] or sorted(memory.ids) == ["a", "b", "c", "d"]
    b = memory.ids.index("b")
    assert np.allclose(memory.vectors[b], vectors[1])  # the first remembered vector is kept
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
        spec_version="v0", remembered_at="2026-01-01T00:00:00+00:00",
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
