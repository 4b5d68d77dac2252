"""Give the heap that earlier steps freed back to the operating system.

The assets of a run execute one after another in one process, and the model-calling ones run
several threads (the provider loop, the embedding prefetcher, torch's pool). glibc keeps memory a
thread freed in that thread's arena instead of returning it, so the peak of one asset stays in the
process's RSS while the next one allocates its own: at 100,000 rows the run's RSS only grew.
``malloc_trim`` returns the free pages; elsewhere (macOS, musl) this is a no-op.

Arrow does not allocate from glibc: its buffers come from its own pool (mimalloc in the Linux
wheels), which keeps the pages of freed buffers too. Reading a 100,000-row embeddings partition
(173 MB of table) left the process at ~1 GB RSS; the pool's ``release_unused`` brought it to
~470 MB. So the pool is released as well, when pyarrow is loaded.

Before the trim, a garbage collection frees what only cycles kept alive. A full collection walks
every tracked object: with dagster, torch and DSPy loaded that is over 600,000 objects and about
0.3 s, and an asset reads several inputs (a sharded one, in each of its steps). The full pass
therefore runs at most once per ``FULL_COLLECTION_INTERVAL_S``; in between only the young
generations are collected (milliseconds), and Python's own full collections still run on their
thresholds. The trim itself takes a few milliseconds and always runs.

The first full collection in a process ends with ``gc.freeze()``: what is alive then (the loaded
modules, dagster's definitions, the first step's small inputs) moves to a permanent generation that
later full passes skip, so they walk only what the run created since: in a Celery worker, which
starts every shard step with a full pass, that took ~0.35 s a step to a few milliseconds. Frozen
objects are still freed by reference counting; only a cycle among them would stay.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
import time
from functools import cache
from typing import Any

FULL_COLLECTION_INTERVAL_S = 10.0
_last_full_collection = float("-inf")
_frozen = False


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> bool:
    """Collect garbage, then return free heap pages (glibc's and Arrow's pool) to the OS. True when
    glibc's trim ran."""
    global _last_full_collection, _frozen
    now = time.monotonic()
    if now - _last_full_collection >= FULL_COLLECTION_INTERVAL_S:
        gc.collect()
        if not _frozen:
            gc.freeze()
            _frozen = True
        _last_full_collection = time.monotonic()
    else:
        gc.collect(1)
    arrow = sys.modules.get("pyarrow")  # never imported just for this
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
