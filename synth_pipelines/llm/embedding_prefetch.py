"""Embeddings computed while the network is busy: a background thread that fills the embedding cache.

An asset that waits on model calls (``raw_generations``) hands each finished row's texts to an
:class:`EmbeddingPrefetcher`; a worker thread embeds them in bounded batches into the embedding
cache (``cache/embeddings.sqlite``, keyed by model, backend and text), so the assets after it
(``validated_examples``' on-topic and memory gates, ``example_embeddings``) find the vectors cached
instead of embedding everything after the last reply has arrived.

The prefetcher only ever adds to a cache: it never decides anything. A text it had no time for, or
dropped because its queue was full, is embedded later by whoever needs it, exactly as before;
a text embedded for a row that is later rejected costs CPU that was idle anyway. ``submit`` never
blocks (it runs on the provider's event loop), and ``close`` does not wait for the queue, only for
the batch in progress, so the asset's own time is not lengthened by it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

# Texts waiting at most, by count and by characters (whichever is reached first); beyond either a
# submission is dropped (embedded later by the asset that needs it, or submitted again by the next
# asset that waits on the network). Callers submit only what the cache lacks (``uncached_texts``),
# so a full queue means the embedder is far behind, not that it is busy with cached texts. The
# character bound is what holds memory: generated rows run to ~1,500 characters a text, so 200,000
# texts were ~300 MB of strings at 100,000 rows, where the embedder falls behind generation.
MAX_PENDING = 200_000
MAX_PENDING_CHARS = 48_000_000
_STOP = object()

EmbedFn = Callable[[list[str]], np.ndarray]


class EmbeddingPrefetcher:
    """Embed submitted texts into the embedding cache in a background thread, ``batch`` at a time.

    ``embed`` is the caller's cached embedding function (the same model, backend and cache path the
    later assets use, so their lookups hit). Use as a context manager, or call :meth:`start` and
    :meth:`close`.
    """

    def __init__(
        self,
        embed: EmbedFn,
        *,
        batch: int = 128,
        max_pending: int = MAX_PENDING,
        max_pending_chars: int = MAX_PENDING_CHARS,
    ):
        self._embed = embed
        self._batch = max(1, batch)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._max_chars = max_pending_chars
        self._pending_chars = 0
        self._chars_lock = threading.Lock()
        # Hashes, not the texts: a set of every text ever submitted held them all for the whole
        # asset (at 100,000 rows, several hundred MB of strings already embedded and cached). A
        # 64-bit collision only skips a prefetch; the text is then embedded by whoever needs it.
        self._seen: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.submitted = 0
        self.embedded = 0
        self.dropped = 0
        self.busy_s = 0.0
        self.error: str | None = None

    def start(self) -> EmbeddingPrefetcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="synth-embed-prefetch", daemon=True)
            self._thread.start()
        return self

    def submit(self, texts: Iterable[str]) -> None:
        """Queue texts not queued before; never blocks (a full queue drops them: embedded later)."""
        if self._stop.is_set():
            return
        for text in texts:
            key = hash(text)
            if not text or key in self._seen:
                continue
            self._seen.add(key)
            with self._chars_lock:
                fits = self._pending_chars + len(text) <= self._max_chars
                if fits:
                    self._pending_chars += len(text)
            if not fits:
                self.dropped += 1
                continue
            try:
                self._queue.put_nowait(text)
                self.submitted += 1
            except queue.Full:
                self._taken([text])
                self.dropped += 1

    def close(self, timeout_s: float = 30.0, *, drain_s: float = 0.0) -> None:
        """Stop after the batch in progress; what is still queued is left to the later assets.
        ``drain_s`` first gives the queue that long to empty."""
        deadline = time.monotonic() + drain_s
        while drain_s and self._thread is not None and self._thread.is_alive():
            if self.embedded >= self.submitted or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        self._stop.set()
        with contextlib.suppress(queue.Full):  # full: the worker is busy and sees the stop flag next
            self._queue.put_nowait(_STOP)  # wake the worker if it waits on an empty queue
        if self._thread is not None:
            self._thread.join(timeout_s)

    def stats(self) -> dict[str, Any]:
        """What the prefetcher did, for the asset's metadata."""
        return {
            "submitted": self.submitted,
            "embedded": self.embedded,
            "left_for_later": max(0, self.submitted - self.embedded),
            "dropped_queue_full": self.dropped,
            "busy_s": round(self.busy_s, 2),
            **({"error": self.error} if self.error else {}),
        }

    def __enter__(self) -> EmbeddingPrefetcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_batch(self) -> list[str]:
        first = self._queue.get()
        if first is _STOP:
            return []
        batch = [first]
        while len(batch) < self._batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._stop.set()
                break
            batch.append(item)
        self._taken(batch)
        return batch

    def _taken(self, texts: list[str]) -> None:
        with self._chars_lock:
            self._pending_chars -= sum(len(t) for t in texts)

    def _work(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if not batch:
                return
            started = time.perf_counter()
            try:
                self._embed(batch)
            except Exception as e:
                # The asset that needs these vectors embeds them itself and reports any real error.
                self.error = f"{type(e).__name__}: {e}"[:300]
                return
            self.busy_s += time.perf_counter() - started
            self.embedded += len(batch)
