"""SQLite connections for the state shared between processes (response cache, rate buckets)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path


def connect_shared(path: Path, *, timeout_s: float = 60.0) -> sqlite3.Connection:
    """An autocommit connection in WAL mode, safe to open from several processes at once.

    Switching a new database file to WAL takes a lock that SQLite does not wait for (its busy timeout
    does not apply), so two processes creating the file together can see ``database is locked``;
    that step is retried until ``timeout_s``. Once the file is in WAL mode the switch is a no-op.
    """
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(delay)
            delay = min(0.5, delay * 2)


class SharedDatabase:
    """One :func:`connect_shared` connection per thread (sqlite3 connections are not thread-safe)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect_shared(self.path)
        return conn
