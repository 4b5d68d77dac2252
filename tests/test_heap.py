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


def test_the_full_collection_runs_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full pass over every object costs ~0.3 s with the models loaded, and an asset reads
    several inputs: between full passes only the young generations are collected."""
    from synth_pipelines.warehouse import heap

    calls: list[tuple[int, ...]] = []
    clock = {"now": 1000.0}
    monkeypatch.setattr(heap.gc, "collect", lambda *generation: calls.append(generation) or 0)
    monkeypatch.setattr(heap.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(heap, "_last_full_collection", float("-inf"))
    for step in (0.0, 1.0, 2.0, heap.FULL_COLLECTION_INTERVAL_S + 0.5, 0.1):
        clock["now"] += step
        heap.release_freed_memory()
    assert calls == [(), (1,), (1,), (), (1,)]
