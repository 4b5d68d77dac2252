"""Per-model admission control: adaptive concurrency, Retry-After pauses, a circuit breaker, and
requests-/tokens-per-minute buckets that hold across processes.

* :class:`AdaptiveLimit`: AIMD with slow start. Concurrency starts small, doubles every round trip
  until the endpoint pushes back (429 or timeout), then halves and grows back by one per round trip.
  ``max_concurrency`` is only the ceiling, so a user does not have to guess it.
* :class:`CircuitBreaker`: opens after consecutive connection failures or a high error rate over a
  window, so a dead endpoint fails the asset in seconds instead of grinding through every item's
  retries. After ``reset_s`` one probe call may close it again.
* :class:`RateBuckets`: RPM/TPM token buckets. With a state folder they live in one SQLite file, so
  every process of a backfill (or every pod sharing the volume) draws from the same quota; one
  short transaction per call, run off the event loop. Across machines, a Redis server instead
  (``llm/redis_state.py``). (pyrate-limiter's SQLite bucket stores one
  row per unit of weight, which a tokens-per-minute limit makes unusable, and its shared-state
  buckets only work between related processes; aiolimiter is per process.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from synth_pipelines.llm.redis_state import RedisBuckets, is_redis_url
from synth_pipelines.llm.sqlite import SharedDatabase
from synth_pipelines.llm.types import ProviderError

# ----------------------------------------------------------------------------------- adaptive limit


class AdaptiveLimit:
    """An asyncio semaphore whose size follows AIMD: +1 per success in slow start (doubling per round
    trip), +1/limit per success after the first congestion, halved on congestion. Loop-bound."""

    def __init__(self, ceiling: int, *, initial: int = 4, adaptive: bool = True):
        self.ceiling = max(1, ceiling)
        self.adaptive = adaptive
        self.limit = float(min(self.ceiling, max(1, initial)) if adaptive else self.ceiling)
        self.in_flight = 0
        self.slow_start = True
        self.cuts = 0
        self.peak = self.limit
        self._last_cut = -1e9
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        while self.in_flight >= int(self.limit):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                raise
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def on_success(self) -> None:
        if not self.adaptive:
            return
        self.limit = min(self.ceiling, self.limit + (1.0 if self.slow_start else 1.0 / self.limit))
        self.peak = max(self.peak, self.limit)
        self._wake()

    def on_congestion(self, hold_s: float = 1.0) -> None:
        """Halve once per congestion episode: replies of the same round trip all carry the news."""
        if not self.adaptive:
            return
        now = time.monotonic()
        if now - self._last_cut < hold_s:
            return
        self._last_cut = now
        self.slow_start = False
        self.limit = max(1.0, self.limit / 2)
        self.cuts += 1

    def _wake(self) -> None:
        free = int(self.limit) - self.in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


# ---------------------------------------------------------------------------------- circuit breaker


class CircuitOpen(ProviderError):
    """The model's endpoint is considered down; calls fail at once instead of waiting on retries."""


class CircuitBreaker:
    """Closed -> open on ``consecutive`` connection failures in a row, or on an error rate of at least
    ``error_rate`` over the last ``window`` attempts (once ``min_calls`` are in). Open -> half-open
    after ``reset_s``: one probe call; its success closes the breaker, its failure re-opens it."""

    def __init__(
        self,
        model: str,
        endpoint: str,
        *,
        consecutive: int = 5,
        window: int = 50,
        error_rate: float = 0.9,
        min_calls: int = 20,
        reset_s: float = 30.0,
    ):
        self.model = model
        self.endpoint = endpoint
        self.consecutive = consecutive
        self.error_rate = error_rate
        self.min_calls = min_calls
        self.reset_s = reset_s
        self._recent: collections.deque[bool] = collections.deque(maxlen=window)
        self._connection_failures = 0
        self.opened_at: float | None = None
        self.cause = ""
        self.opens = 0
        self._probe_in_flight = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def check(self) -> None:
        """Raise :class:`CircuitOpen` unless a call may go out now."""
        if self.opened_at is None:
            return
        if time.monotonic() - self.opened_at >= self.reset_s and not self._probe_in_flight:
            self._probe_in_flight = True  # half-open: let exactly one call test the endpoint
            return
        raise CircuitOpen(
            self.model,
            f"endpoint {self.endpoint} looks down ({self.cause}); stopped calling it. Check that the "
            "server is up and reachable, then rerun: finished items are kept and a rerun resumes them.",
            kind="circuit_open",
        )

    def record_success(self) -> None:
        self._recent.append(True)
        self._connection_failures = 0
        if self.opened_at is not None:
            self.opened_at = None  # the half-open probe got through
        self._probe_in_flight = False

    def record_failure(self, error: ProviderError, *, connection: bool) -> None:
        self._recent.append(False)
        self._connection_failures = self._connection_failures + 1 if connection else 0
        if self.opened_at is not None:  # the probe failed: stay open for another period
            self.opened_at = time.monotonic()
            self._probe_in_flight = False
            return
        failures = self._recent.count(False)
        if self._connection_failures >= self.consecutive:
            self._open(f"{self._connection_failures} connection failures in a row, last: {error.detail}")
        elif len(self._recent) >= self.min_calls and failures / len(self._recent) >= self.error_rate:
            self._open(f"{failures} of the last {len(self._recent)} calls failed, last: {error.detail}")

    def trip(self, cause: str) -> None:
        """Open now (a failed capability check found the endpoint unreachable)."""
        self._open(cause)

    def _open(self, cause: str) -> None:
        self.opened_at = time.monotonic()
        self.cause = cause
        self.opens += 1


# --------------------------------------------------------------------------------- rate buckets


class _MemoryBuckets:
    """Bucket state for one process (used when there is no state folder)."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def reserve(self, key: str, units: float, per_minute: float) -> float:
        with self._lock:
            now = time.time()
            tokens, updated = self._state.get(key, (per_minute, now))
            tokens, wait = _reserve(tokens, updated, units, per_minute, now)
            self._state[key] = (tokens, max(now, updated))
            return wait


class _SQLiteBuckets:
    """Bucket state in a SQLite file in the state folder, shared by every process that uses it."""

    def __init__(self, path: Path):
        self._db = SharedDatabase(path)
        self._conn().execute(
            "CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, "
            "updated REAL NOT NULL)"
        )

    def _conn(self) -> sqlite3.Connection:
        return self._db.conn()

    def reserve(self, key: str, units: float, per_minute: float) -> float:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # one writer at a time across processes
        try:
            # The clock is read inside the transaction: a timestamp taken before the lock could be
            # older than the one the previous holder stored, and the refill would count twice.
            now = time.time()
            row = conn.execute("SELECT tokens, updated FROM buckets WHERE key = ?", (key,)).fetchone()
            tokens, updated = row if row else (per_minute, now)
            tokens, wait = _reserve(tokens, updated, units, per_minute, now)
            conn.execute(
                "INSERT OR REPLACE INTO buckets (key, tokens, updated) VALUES (?, ?, ?)",
                (key, tokens, max(now, updated)),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return wait


def _reserve(
    tokens: float, updated: float, units: float, per_minute: float, now: float
) -> tuple[float, float]:
    """Refill, then take ``units`` even if that goes negative (a reservation): the caller waits until
    the bucket would have held them. Reservations queue callers fairly with no retry loop."""
    rate = per_minute / 60.0
    tokens = min(per_minute, tokens + max(0.0, now - updated) * rate)
    tokens -= min(units, per_minute)  # one request larger than the bucket must not wait forever
    return tokens, max(0.0, -tokens / rate)


class RateBuckets:
    """RPM and TPM for one model. ``path`` is the shared SQLite file (one machine), a ``redis://``
    URL (several machines, :class:`~synth_pipelines.llm.redis_state.RedisBuckets`), or None for
    process-local."""

    _MEMORY = _MemoryBuckets()

    def __init__(self, model_key: str, rpm: int | None, tpm: int | None, path: Path | str | None = None):
        self.model_key = model_key
        self.rpm = rpm
        self.tpm = tpm
        self._store: _MemoryBuckets | _SQLiteBuckets | RedisBuckets = self._MEMORY
        if is_redis_url(path):
            self._store = RedisBuckets(str(path))
        elif path:
            self._store = _SQLiteBuckets(Path(path))
        self.waited_s = 0.0

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm)

    async def admit(self, estimated_tokens: int) -> None:
        if not self.active:
            return
        waits = []
        # Wall-clock time: the buckets are shared with other processes.
        if self.rpm:
            waits.append(await self._reserve("rpm", 1, self.rpm))
        if self.tpm:
            waits.append(await self._reserve("tpm", estimated_tokens, self.tpm))
        wait = max(waits)
        if wait > 0:
            self.waited_s += wait
            await asyncio.sleep(wait)

    async def _reserve(self, kind: str, units: float, per_minute: int) -> float:
        key = f"{self.model_key}:{kind}"
        if isinstance(self._store, _MemoryBuckets):
            return self._store.reserve(key, units, per_minute)
        return await asyncio.to_thread(self._store.reserve, key, units, per_minute)


# ------------------------------------------------------------------------------------ model gate


class ModelGate:
    """Everything that gates calls to one model, created inside the client's event loop."""

    def __init__(
        self,
        model: str,
        endpoint: str,
        *,
        ceiling: int,
        adaptive: bool,
        rpm: int | None,
        tpm: int | None,
        buckets_path: Path | str | None,
        bucket_key: str,
        breaker: CircuitBreaker | None = None,
    ):
        self.model = model
        self.concurrency = AdaptiveLimit(ceiling, adaptive=adaptive)
        self.buckets = RateBuckets(bucket_key, rpm, tpm, buckets_path)
        self.breaker = breaker or CircuitBreaker(model, endpoint)
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Retry-After: no new call to this model starts before ``seconds`` from now."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    @property
    def paused(self) -> bool:
        return self._paused_until > time.monotonic()

    async def wait_unpaused(self) -> None:
        while (delay := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    def stats(self) -> dict[str, float | int | bool]:
        return {
            "concurrency_limit": round(self.concurrency.limit, 2),
            "concurrency_peak": round(self.concurrency.peak, 2),
            "congestion_cuts": self.concurrency.cuts,
            "rate_limit_wait_s": round(self.buckets.waited_s, 3),
            "breaker_opened": self.breaker.opens,
        }
