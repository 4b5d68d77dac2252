"""Rows of a model-calling asset, written as they arrive, and the partition built from them.

A long generation never holds its rows in memory: every ``flush_rows`` rows or ``flush_s`` seconds
the buffered rows become one small Parquet part file in the state folder (temp file + rename, so a
part is whole or absent). A killed run keeps every flushed row; the rerun reads the parts' keys and
asks the model only for the rest. When the run is complete, :func:`build_partition` has DuckDB join
the parts with the current plan, keep one row per item, and stream the result into the partition's
single Parquet file, ordered as planned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

PART_GLOB = "part-*.parquet"


class InflightRows:
    """Buffered, crash-safe writer of one asset partition's rows in progress. Thread-safe."""

    def __init__(self, folder: Path, schema: pa.Schema, *, flush_rows: int = 1000, flush_s: float = 1.0):
        self.folder = folder
        self.schema = schema
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._seq = 0
        self._token = f"{time.time_ns():020d}-{os.getpid()}"
        self.written = 0

    def part_files(self) -> list[Path]:
        return sorted(self.folder.glob(PART_GLOB)) if self.folder.is_dir() else []

    def read_columns(self, columns: Sequence[str]) -> pa.Table:
        """The given columns of every flushed row (what a resuming run needs to skip finished items)."""
        files = self.part_files()
        if not files:
            return pa.table({c: pa.array([], self.schema.field(c).type) for c in columns})
        return pa.concat_tables(pq.read_table(f, columns=list(columns)) for f in files)

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._buffer.append(row)
            due = len(self._buffer) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_s
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            rows, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
            if not rows:
                return
            self._seq += 1
            name = f"part-{self._token}-{self._seq:06d}.parquet"
            table = pa.Table.from_pylist(
                [{n: r.get(n) for n in self.schema.names} for r in rows], self.schema
            )
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{name}.tmp"
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, self.folder / name)
            self.written += len(rows)

    def clear(self) -> None:
        """Drop the parts once the partition holds every row."""
        shutil.rmtree(self.folder, ignore_errors=True)


def build_partition(
    parts: Sequence[Path],
    plan: pa.Table,
    schema: pa.Schema,
    out: Path,
    *,
    key: Sequence[str] = ("example_id", "prompt_hash"),
    prefer: str = "r.status = 'ok'",
    temp_dir: Path | None = None,
) -> int:
    """Write the partition file ``out`` from the part files: one row per planned item (``plan`` holds
    ``plan_index`` plus the ``key`` columns), the best row where an item was tried more than once
    (the part row ``r`` for which ``prefer`` holds first, then the newest part), in plan order.
    Returns the row count.

    DuckDB streams the parts, so memory stays bounded however many rows there are.
    """
    conn = duckdb.connect()
    try:
        if temp_dir is not None:
            conn.execute(f"SET temp_directory = '{_sql_path(temp_dir)}'")
        conn.execute("SET preserve_insertion_order = false")
        conn.register("plan", plan)
        files = ", ".join(f"'{_sql_path(p)}'" for p in parts)
        columns = ", ".join(f'r."{c}"' for c in schema.names)
        on = " AND ".join(f'r."{k}" = p."{k}"' for k in key)
        tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            source = f"read_parquet([{files}], filename = true, union_by_name = true)" if parts else None
            if source is None:
                pq.write_table(schema.empty_table(), tmp, compression="zstd")
            else:
                conn.execute(
                    f"COPY (SELECT {columns} FROM {source} r JOIN plan p ON {on} "
                    f"QUALIFY row_number() OVER (PARTITION BY {', '.join(f'r.{k}' for k in key)} "
                    f"ORDER BY ({prefer}) DESC, r.filename DESC) = 1 "
                    f"ORDER BY p.plan_index) TO '{_sql_path(tmp)}' (FORMAT parquet, COMPRESSION zstd)"
                )
            rows = pq.ParquetFile(tmp).metadata.num_rows
            os.replace(tmp, out)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return rows
    finally:
        conn.close()


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
