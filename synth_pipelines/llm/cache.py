"""A persistent, content-addressed response cache shared by every process that writes the warehouse.

SQLite in WAL mode gives atomic inserts and concurrent readers across processes (the multiprocess
executor runs several partitions at once), with no server to run.

The client never touches SQLite on its event loop: :class:`CacheBatcher` gathers the lookups that
arrive together into one ``SELECT ... IN (...)`` and the writes of the last ~100 ms into one
transaction, both in a worker thread. A write is visible to lookups in this process at once (it
waits in memory until flushed), so a lock held by another process stalls only the writer thread,
never the requests in flight. ``flush()`` makes everything durable; assets call it before they
finish, and a killed process loses at most the last ~100 ms of replies (they are asked again).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from synth_pipelines.llm.sqlite import SharedDatabase
from synth_pipelines.llm.types import CompletionRequest, RawCompletion

READ_BATCH = 500
WRITE_DELAY_S = 0.1
WRITE_BATCH = 2000


def request_key(request: CompletionRequest, *, attempt: int, model_fingerprint: str) -> str:
    """Hash of model identity + messages + schema + params + seed + attempt. Never includes secrets."""
    payload = {
        "model": request.model,
        "fingerprint": model_fingerprint,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "schema": request.json_schema,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
        "attempt": attempt,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    """``get``/``put`` raw completions by request key, singly or in batches. Thread- and process-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = SharedDatabase(self.path)
        self._conn().execute(
            "CREATE TABLE IF NOT EXISTS responses ("
            " key TEXT PRIMARY KEY, model TEXT NOT NULL, body TEXT NOT NULL,"
            " created_at TEXT DEFAULT CURRENT_TIMESTAMP)"
        )

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
                found[key] = RawCompletion.model_validate_json(body)
        return found

    def put(self, key: str, model: str, completion: RawCompletion) -> None:
        self.put_many([(key, model, completion)])

    def put_many(self, rows: Iterable[tuple[str, str, RawCompletion]]) -> None:
        payload = [(key, model, completion.model_dump_json()) for key, model, completion in rows]
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

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM responses").fetchone()[0])


class CacheBatcher:
    """The cache as the event loop sees it: ``await get``, ``put``, ``await flush``. Loop-bound."""

    def __init__(self, cache: ResponseCache):
        self.cache = cache
        self._pending: dict[str, tuple[str, RawCompletion]] = {}
        self._waiting: dict[str, list[asyncio.Future[RawCompletion | None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.write_errors = 0

    async def get(self, key: str) -> RawCompletion | None:
        pending = self._pending.get(key)
        if pending is not None:
            return pending[1]
        loop = asyncio.get_running_loop()
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
            except sqlite3.Error:
                found = {}  # an unreadable cache is a miss, never a failed call
            for key, waiters in futures.items():
                for f in waiters:
                    if not f.done():
                        f.set_result(found.get(key))

    def put(self, key: str, model: str, completion: RawCompletion) -> None:
        self._pending[key] = (model, completion)
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
            except sqlite3.Error:
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
