"""A persistent, content-addressed response cache shared by every process that writes the warehouse.

SQLite in WAL mode gives atomic inserts and concurrent readers across processes (the multiprocess
executor runs several partitions at once), with no server to run.

The client never touches SQLite on its event loop: :class:`CacheBatcher` gathers the lookups that
arrive together into one ``SELECT ... IN (...)`` and the writes of the last ~100 ms into one
transaction, both in a worker thread. A write is visible to lookups in this process at once (it
waits in memory until flushed), so a lock held by another process stalls only the writer thread,
never the requests in flight. ``flush()`` makes everything durable; assets call it before they
finish, and a killed process loses at most the last ~100 ms of replies (they are asked again).

A lookup of a key the cache does not hold (every call of a first run) is answered in memory by a
Bloom filter over the cache's keys (:class:`KeyFilter`), loaded once and kept current with this
process's writes and, within a second, with other processes' writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson

from synth_pipelines.llm.sqlite import SharedDatabase
from synth_pipelines.llm.types import CompletionRequest, RawCompletion

READ_BATCH = 500
WRITE_DELAY_S = 0.1
WRITE_BATCH = 2000


def request_key(request: CompletionRequest, *, attempt: int, model_fingerprint: str) -> str:
    """Hash of model identity + messages + schema + params + seed + attempt. Never includes secrets.

    The text hashed is exactly ``json.dumps(payload, sort_keys=True, ensure_ascii=False)`` of
    ``{attempt, fingerprint, max_tokens, messages, model, schema, seed, temperature}``, assembled
    from parts so that the schema, the same for thousands of calls, is serialized once.
    """
    messages = ", ".join(
        f'{{"content": {_string(m.content)}, "role": {_string(m.role)}}}' for m in request.messages
    )
    text = (
        f'{{"attempt": {int(attempt)}, "fingerprint": {_string(model_fingerprint)}, '
        f'"max_tokens": {int(request.max_tokens)}, "messages": [{messages}], '
        f'"model": {_string(request.model)}, "schema": {schema_text(request.json_schema)}, '
        f'"seed": {int(request.seed)}, "temperature": {_FLOAT(float(request.temperature))}}}'
    )
    return hashlib.sha256(text.encode()).hexdigest()


# What json.dumps(..., ensure_ascii=False) does for a str and a float, without building an encoder.
_string = json.encoder.encode_basestring
_FLOAT = float.__repr__


_SCHEMA_TEXT: dict[tuple[int, bool], tuple[object, str]] = {}


def schema_text(schema: dict[str, object] | None, *, ascii: bool = False) -> str:
    """``json.dumps(schema, sort_keys=True, ensure_ascii=ascii)``, computed once per schema object.

    Keyed by identity (the entry keeps the object alive, so the id cannot be reused); schemas are
    built once per spec or criteria list and shared by every call."""
    if schema is None:
        return "null"
    key = (id(schema), ascii)
    entry = _SCHEMA_TEXT.get(key)
    if entry is None or entry[0] is not schema:
        if len(_SCHEMA_TEXT) > 4096:
            _SCHEMA_TEXT.clear()
        entry = _SCHEMA_TEXT[key] = (schema, json.dumps(schema, sort_keys=True, ensure_ascii=ascii))
    return entry[1]


class ResponseStore(Protocol):
    """What the client needs of a response cache: :class:`ResponseCache` (SQLite, one machine) or
    :class:`~synth_pipelines.llm.redis_state.RedisResponseCache` (several machines)."""

    @property
    def location(self) -> str: ...
    def get_many(self, keys: list[str]) -> dict[str, RawCompletion]: ...
    def put_many(self, rows: Iterable[tuple[str, str, RawCompletion]]) -> None: ...
    def keys_since(self, rowid: int) -> list[tuple[int, str]]: ...
    def __len__(self) -> int: ...


def open_response_cache(location: str | Path) -> ResponseStore:
    """The response cache at ``location``: a ``redis://`` URL or a SQLite file."""
    from synth_pipelines.llm.redis_state import RedisResponseCache, is_redis_url

    if is_redis_url(location):
        return RedisResponseCache(str(location))
    return ResponseCache(location)


def cache_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable or broken cache raises: a miss or a skipped write, never a failed call."""
    try:
        from redis import RedisError
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, RedisError)


class ResponseCache:
    """``get``/``put`` raw completions by request key, singly or in batches. Thread- and process-safe
    on one machine (SQLite); :class:`~synth_pipelines.llm.redis_state.RedisResponseCache` is the
    same interface for workers on several machines."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = SharedDatabase(self.path)
        self._conn().execute(
            "CREATE TABLE IF NOT EXISTS responses ("
            " key TEXT PRIMARY KEY, model TEXT NOT NULL, body TEXT NOT NULL,"
            " created_at TEXT DEFAULT CURRENT_TIMESTAMP)"
        )

    @property
    def location(self) -> str:
        return str(self.path)

    def _conn(self) -> sqlite3.Connection:
        return self._db.conn()

    def get(self, key: str) -> RawCompletion | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: list[str]) -> dict[str, RawCompletion]:
        found: dict[str, RawCompletion] = {}
        conn = self._conn()
        for start in range(0, len(keys), READ_BATCH):
            chunk = keys[start : start + READ_BATCH]
            marks = ",".join("?" * len(chunk))
            for key, body in conn.execute(f"SELECT key, body FROM responses WHERE key IN ({marks})", chunk):
                found[key] = RawCompletion.from_json(body)
        return found

    def put(self, key: str, model: str, completion: RawCompletion) -> None:
        self.put_many([(key, model, completion)])

    def put_many(self, rows: Iterable[tuple[str, str, RawCompletion]]) -> None:
        payload = [(key, model, orjson.dumps(completion).decode()) for key, model, completion in rows]
        if not payload:
            return
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO responses (key, model, body) VALUES (?, ?, ?)", payload)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def keys_since(self, rowid: int) -> list[tuple[int, str]]:
        """(rowid, key) of every entry written after ``rowid`` (what :class:`KeyFilter` reads)."""
        return self._conn().execute("SELECT rowid, key FROM responses WHERE rowid > ?", (rowid,)).fetchall()

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM responses").fetchone()[0])


class KeyFilter:
    """A Bloom filter of the keys a :class:`ResponseCache` holds: ``maybe(key)`` False means absent.

    The keys are SHA-256 hex digests already, so four 32-bit slices of a key are its bit positions.
    Sized at 16 bits per key (false positives ~0.2% at k=4), rebuilt larger when it fills up. Other
    processes' writes are read by rowid every ``refresh_s``; a key they wrote in the last moment may
    look absent, which costs one repeated call, never a wrong reply.
    """

    HASHES = 4

    def __init__(self, cache: ResponseStore, *, refresh_s: float = 1.0):
        self.cache = cache
        self.refresh_s = refresh_s
        self._bits = np.zeros(1, dtype=np.uint8)
        self._mask = 0
        self._count = 0
        self._capacity = 0
        self._max_rowid = 0
        self._refreshed = 0.0

    def load(self) -> None:
        """Read every key once (vectorized) and size the filter for it. Runs in a worker thread."""
        rows = self.cache.keys_since(0)
        size = 1 << max(20, int(np.ceil(np.log2(max(1, len(rows)) * 16))))
        self._bits = np.zeros(size // 8, dtype=np.uint8)
        self._mask = size - 1
        self._capacity = size // 16
        self._count = 0
        self._add_many([k for _, k in rows])
        self._max_rowid = max((r for r, _ in rows), default=0)
        self._refreshed = time.monotonic()

    def refresh(self) -> None:
        """Add the keys written since the last look (by any process). Runs in a worker thread."""
        rows = self.cache.keys_since(self._max_rowid)
        self._add_many([k for _, k in rows])
        self._max_rowid = max((r for r, _ in rows), default=self._max_rowid)
        self._refreshed = time.monotonic()

    def stale(self) -> bool:
        return time.monotonic() - self._refreshed >= self.refresh_s

    def full(self) -> bool:
        return self._count > self._capacity

    def add(self, key: str) -> None:
        for position in self._positions(key):
            self._bits[position >> 3] |= 1 << (position & 7)
        self._count += 1

    def maybe(self, key: str) -> bool:
        return all(self._bits[p >> 3] & (1 << (p & 7)) for p in self._positions(key))

    def _positions(self, key: str) -> tuple[int, int, int, int]:
        # One int parse of the key's first 128 bits, then four 32-bit slices (as _add_many reads them).
        v, m = int(key[:32], 16), self._mask
        return ((v >> 96) & m, (v >> 64) & m, (v >> 32) & m, v & m)

    def _add_many(self, keys: list[str]) -> None:
        if not keys:
            return
        raw = np.frombuffer(b"".join(bytes.fromhex(k[: 8 * self.HASHES]) for k in keys), dtype=">u4")
        positions = raw.astype(np.int64) & self._mask
        np.bitwise_or.at(self._bits, positions >> 3, (1 << (positions & 7)).astype(np.uint8))
        self._count += len(keys)


class CacheBatcher:
    """The cache as the event loop sees it: ``await get``, ``put``, ``await flush``. Loop-bound."""

    def __init__(self, cache: ResponseStore):
        self.cache = cache
        self._pending: dict[str, tuple[str, RawCompletion]] = {}
        self._waiting: dict[str, list[asyncio.Future[RawCompletion | None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._filter = KeyFilter(cache)
        self._filter_ready: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.write_errors = 0

    async def get(self, key: str) -> RawCompletion | None:
        pending = self._pending.get(key)
        if pending is not None:
            return pending[1]
        loop = asyncio.get_running_loop()
        if self._filter_ready is None or (self._filter_ready.done() and self._filter.full()):
            self._filter_ready = loop.create_task(asyncio.to_thread(self._filter.load))
        if not self._filter_ready.done():
            await asyncio.shield(self._filter_ready)
        if self._filter.stale() and (self._refresher is None or self._refresher.done()):
            self._refresher = loop.create_task(asyncio.to_thread(self._filter.refresh))
        if not self._filter.maybe(key):
            return None  # certainly absent: no thread hop, no query
        future: asyncio.Future[RawCompletion | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read())
        return await future

    async def _read(self) -> None:
        await asyncio.sleep(0)  # let lookups issued in the same loop turn join this batch
        while self._waiting:
            keys = list(self._waiting)[:READ_BATCH]
            futures = {k: self._waiting.pop(k) for k in keys}
            try:
                found = await asyncio.to_thread(self.cache.get_many, keys)
            except cache_errors():
                found = {}  # an unreadable cache is a miss, never a failed call
            for key, waiters in futures.items():
                for f in waiters:
                    if not f.done():
                        f.set_result(found.get(key))

    def put(self, key: str, model: str, completion: RawCompletion) -> None:
        self._pending[key] = (model, completion)
        self._filter.add(key)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_soon())

    async def _write_soon(self) -> None:
        await asyncio.sleep(WRITE_DELAY_S)
        await self._write_pending()

    async def _write_pending(self) -> None:
        while self._pending:
            batch = list(self._pending.items())[:WRITE_BATCH]
            try:
                await asyncio.to_thread(self.cache.put_many, [(k, m, c) for k, (m, c) in batch])
            except cache_errors():
                # Kept in memory and retried on the next flush; a reply that never reaches the
                # cache costs one repeated call on a rerun, not a failed run.
                self.write_errors += 1
                return
            for key, value in batch:
                if self._pending.get(key) is value:
                    del self._pending[key]

    async def flush(self) -> None:
        """Write every pending reply now (assets call this before they finish)."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        await self._write_pending()
