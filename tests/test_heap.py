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
