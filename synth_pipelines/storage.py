"""The warehouse: one root holding hive-partitioned Parquet, the DuckDB file, the cache and programs.

Every write is atomic (temp file + rename) and replaces the whole partition, so a crash leaves the
last good version readable and a re-materialization never duplicates rows. Reading needs nothing
from this project::

    duckdb -c "select * from read_parquet('warehouse/validated_examples/*/*.parquet', hive_partitioning=true)"
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from duckdb import DuckDBPyConnection

from synth_pipelines.domains import validate_domain_name

PART_FILE = "part-0.parquet"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_rows_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` or ``.parquet`` file. A malformed JSON line becomes a row holding
    ``_error`` so that callers can reject it with a reason instead of failing the whole file."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    rows: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            rows.append(value if isinstance(value, dict) else {"_error": "not a JSON object"})
        except json.JSONDecodeError as e:
            rows.append({"_error": f"malformed JSON: {e.msg}"})
    return rows


class Warehouse:
    """Paths and read/write helpers under one root (default ``./warehouse``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    # ---------------------------------------------------------------- layout
    @property
    def duckdb_path(self) -> Path:
        return self.root / "synth.duckdb"

    @property
    def cache_path(self) -> Path:
        return self.root / "cache" / "responses.sqlite"

    def programs_dir(self, domain: str) -> Path:
        return self.root / "programs" / f"domain={validate_domain_name(domain)}"

    def partition_dir(self, asset: str, domain: str) -> Path:
        return self.root / asset / f"domain={validate_domain_name(domain)}"

    def partition_file(self, asset: str, domain: str) -> Path:
        return self.partition_dir(asset, domain) / PART_FILE

    def glob(self, asset: str) -> str:
        return str(self.root / asset / "*" / "*.parquet")

    # ---------------------------------------------------------------- parquet
    def write_partition(self, asset: str, domain: str, table: pa.Table) -> Path:
        """Replace the partition's rows with ``table`` atomically. The ``domain`` column lives in the path."""
        if "domain" in table.column_names:
            table = table.drop(["domain"])
        path = self.partition_file(asset, domain)
        atomic_write_parquet(path, table)
        # Older part files (other writers or layouts) would duplicate rows: the partition is one file.
        for other in path.parent.glob("*.parquet"):
            if other.name != PART_FILE:
                other.unlink()
        return path

    def read_partition(self, asset: str, domain: str) -> pa.Table | None:
        path = self.partition_file(asset, domain)
        if not path.is_file():
            return None
        return pq.read_table(path)

    def write_json(self, relative: str, payload: Any) -> Path:
        path = self.root / relative
        atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
        return path

    # ---------------------------------------------------------------- duckdb
    @contextlib.contextmanager
    def duckdb(self, *, retries: int = 60) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection; waits while another process holds the file lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        delay = 0.05
        for attempt in range(retries):
            try:
                conn = duckdb.connect(str(self.duckdb_path))
                break
            except duckdb.IOException as e:
                if "lock" not in str(e).lower() or attempt == retries - 1:
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _add_missing_columns(conn: DuckDBPyConnection, table_name: str, casts: str) -> None:
        """Schema evolution: a column added to a dataset is added to its existing DuckDB table."""
        have = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table_name]
            ).fetchall()
        }
        incoming = conn.execute(f"DESCRIBE SELECT {casts} FROM incoming LIMIT 0").fetchall()
        for name, dtype, *_ in incoming:
            if name not in have:
                conn.execute(f'ALTER TABLE {table_name} ADD COLUMN "{name}" {dtype}')

    def replace_domain_rows(
        self, table_name: str, domain: str, table: pa.Table, *, column_types: dict[str, str] | None = None
    ) -> None:
        """Replace one domain's rows in a DuckDB table in one transaction (create it on first use)."""
        validate_domain_name(domain)
        if not table_name.replace("_", "").isalnum():
            raise ValueError(f"bad table name {table_name!r}")
        data = table.drop(["domain"]) if "domain" in table.column_names else table
        data = data.append_column("domain", pa.array([domain] * data.num_rows, pa.string()))
        casts = ", ".join(
            f'CAST("{c}" AS {column_types[c]}) AS "{c}"' if column_types and c in column_types else f'"{c}"'
            for c in data.column_names
        )
        with self.duckdb() as conn:
            conn.register("incoming", data)
            conn.execute("BEGIN")
            try:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {table_name} AS SELECT {casts} FROM incoming LIMIT 0"
                )
                self._add_missing_columns(conn, table_name, casts)
                conn.execute(f"DELETE FROM {table_name} WHERE domain = ?", [domain])
                conn.execute(f"INSERT INTO {table_name} BY NAME SELECT {casts} FROM incoming")
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
            finally:
                conn.unregister("incoming")
