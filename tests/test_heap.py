"""The heap a worker thread freed goes back to the OS before the next asset reads its input."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import os, sys, threading
    from synth_pipelines.warehouse.heap import release_freed_memory

    def rss_mb():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024

    def work():  # ~200 MB in malloc-sized blocks, freed in the thread's own glibc arena
        blocks = [bytes(2000) + os.urandom(8) for _ in range(100_000)]
        work.kept = blocks[::1000]

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    before = rss_mb()
    if sys.argv[1] == "trim":
        assert release_freed_memory()
    print(before, rss_mb())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_returns_to_the_os_only_with_the_trim() -> None:
    def run(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
        before, after = map(int, out.stdout.split())
        return before, after

    before, after = run("trim")
    assert before - after > 120, (before, after)
    control_before, control_after = run("keep")
    assert control_before - control_after < 40, (control_before, control_after)


ARROW_CHILD = textwrap.dedent(
    """
    import sys, tempfile
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from synth_pipelines.warehouse.heap import release_freed_memory

    def rss_mb():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024

    # An embeddings-like partition (50,000 x 384 floats, 77 MB), read back: decoding takes its
    # buffers from Arrow's own pool (not glibc's), and most are freed once the table is built.
    vectors = np.random.default_rng(0).standard_normal((50_000, 384)).astype(np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 384)
    path = tempfile.mktemp(suffix=".parquet")
    pq.write_table(pa.table({"embedding": embedding}), path, compression="zstd")
    del vectors, embedding
    release_freed_memory()
    table = pq.read_table(path)
    before = rss_mb()
    if sys.argv[1] == "release":
        release_freed_memory()
    print(pa.default_memory_pool().backend_name, before, rss_mb())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS from /proc")
def test_freed_arrow_buffers_return_to_the_os_with_the_release() -> None:
    def run(mode: str) -> tuple[str, int, int]:
        out = subprocess.run(
            [sys.executable, "-c", ARROW_CHILD, mode], capture_output=True, text=True, check=True
        )
        backend, before, after = out.stdout.split()
        return backend, int(before), int(after)

    backend, before, after = run("release")
    if backend == "system":
        pytest.skip("Arrow allocates from glibc here: the trim test covers it")
    assert before - after > 100, (backend, before, after)
    _, control_before, control_after = run("keep")
    assert control_before - control_after < 40, (backend, control_before, control_after)


def test_the_full_collection_runs_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full pass over every object costs ~0.3 s with the models loaded, and an asset reads
    several inputs: between full passes only the young generations are collected."""
    from synth_pipelines.warehouse import heap

    calls: list[tuple[int, ...]] = []
    clock = {"now": 1000.0}
    monkeypatch.setattr(heap.gc, "collect", lambda *generation: calls.append(generation) or 0)
    monkeypatch.setattr(heap.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(heap, "_last_full_collection", float("-inf"))
    monkeypatch.setattr(heap, "_frozen", True)  # the test process's own objects stay unfrozen
    for step in (0.0, 1.0, 2.0, heap.FULL_COLLECTION_INTERVAL_S + 0.5, 0.1):
        clock["now"] += step
        heap.release_freed_memory()
    assert calls == [(), (1,), (1,), (), (1,)]


FREEZE_CHILD = textwrap.dedent(
    """
    import gc, weakref
    import synth_pipelines.definitions  # what a worker has loaded before its first step
    from synth_pipelines.warehouse import heap

    heap.release_freed_memory()
    frozen = gc.get_freeze_count()

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle that only the collector frees
    alive = weakref.ref(a)
    del a, b
    heap._last_full_collection = float("-inf")  # the next call is a full pass
    heap.release_freed_memory()
    print(frozen, gc.get_freeze_count(), alive() is None, len(gc.get_objects()))
    """
)


def test_the_first_full_pass_freezes_what_is_loaded_and_later_garbage_is_still_collected() -> None:
    """Later full passes walk only objects created after the first one (not the ~600k objects of
    the loaded libraries), and a cycle created later is still freed."""
    out = subprocess.run([sys.executable, "-c", FREEZE_CHILD], capture_output=True, text=True, check=True)
    frozen, frozen_after, cycle_freed, tracked = out.stdout.split()
    assert int(frozen) > 100_000, frozen
    assert int(frozen_after) == int(frozen)  # frozen once per process, not at every pass
    assert cycle_freed == "True"
    assert int(tracked) < int(frozen) // 10  # what a full pass still walks


READ_CHILD = textwrap.dedent(
    """
    import sys, tempfile, threading, time
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pathlib import Path
    from synth_pipelines.warehouse.storage import read_parquet

    def rss_mb():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024

    vectors = np.random.default_rng(0).standard_normal((60_000, 384)).astype(np.float32)
    path = Path(tempfile.mktemp(suffix=".parquet"))
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 384)
    pq.write_table(pa.table({"example_id": [str(i) for i in range(60_000)], "embedding": embedding}), path)
    del vectors, embedding
    peak = [0]

    def sample():
        while True:
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    time.sleep(0.05)
    before = peak[0] = rss_mb()
    table = read_parquet(path) if sys.argv[1] == "batched" else pq.read_table(path)
    time.sleep(0.05)
    print(table.num_rows, table.column("embedding").num_chunks, peak[0] - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS from /proc")
def test_a_partition_is_decoded_in_batches_not_a_row_group_at_once() -> None:
    # pyarrow's read_table decodes a partition's one row group whole: a 100,000-row embeddings
    # partition (153 MB of vectors) peaked at ~1 GB. read_parquet decodes 8,192 rows at a time.
    def run(mode: str) -> tuple[int, int, int]:
        out = subprocess.run(
            [sys.executable, "-c", READ_CHILD, mode], capture_output=True, text=True, check=True
        )
        rows, chunks, grew = map(int, out.stdout.split())
        return rows, chunks, grew

    rows, chunks, batched = run("batched")
    assert (rows, chunks) == (60_000, 8)  # ceil(60,000 / 8,192) batches
    _, _, whole = run("whole")
    assert batched < 0.7 * whole, (batched, whole)
