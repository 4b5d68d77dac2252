"""A persistent, content-addressed response cache shared by every process that writes the warehouse.

SQLite in WAL mode gives atomic inserts and concurrent readers across processes (the multiprocess
executor runs several partitions at once), with no server to run.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

from synth_pipelines.llm.types import CompletionRequest, RawCompletion


def request_key(request: CompletionRequest, *, attempt: int, model_fingerprint: str) -> str:
    """Hash of model identity + messages + schema + params + seed + attempt. Never includes secrets."""
    payload = {
        "model": request.model,
        "fingerprint": model_fingerprint,
        "messages": [m.model_dump() for m in request.messages],
        "schema": request.json_schema,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
        "attempt": attempt,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    """``get``/``put`` raw completions by request key. Thread- and process-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                " key TEXT PRIMARY KEY, model TEXT NOT NULL, body TEXT NOT NULL,"
                " created_at TEXT DEFAULT CURRENT_TIMESTAMP)"
            )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> RawCompletion | None:
        row = self._conn().execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
        return RawCompletion.model_validate_json(row[0]) if row else None

    def put(self, key: str, model: str, completion: RawCompletion) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO responses (key, model, body) VALUES (?, ?, ?)",
            (key, model, completion.model_dump_json()),
        )

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM responses").fetchone()[0])
