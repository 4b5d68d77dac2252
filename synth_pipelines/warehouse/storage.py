"""The warehouse: hive-partitioned Parquet, JSON stats, programs and exports under one root, plus a
local *state* folder for the DuckDB file, the response cache and in-flight generation journals.

The root is a local folder (default ``./warehouse``) or any fsspec URL (``s3://bucket/prefix``,
``gs://...``, ``az://...``, ``memory://...``). Datasets go to the root; the state folder is always a
real filesystem because DuckDB and SQLite need file locks and appends, which object stores lack.
For a local root the state folder *is* the root, so everything sits in one place.

Every write is atomic and replaces the whole partition, so a crash leaves the last good version
readable and a re-materialization never duplicates rows: locally by temp file + rename, on an
object store by one PUT of the finished bytes (an object appears whole or not at all). Reading
needs nothing from this project::

    duckdb -c "select * from read_parquet('warehouse/validated_examples/*/*.parquet', hive_partitioning=true)"
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from duckdb import DuckDBPyConnection
from upath import UPath

from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.names import validate_domain_name

PART_FILE = "part-0.parquet"
# JSON files beside the Parquet partitions, relative to the root (``{domain}`` filled in per partition).
SPEC_FILE = "domain_schema/domain={domain}/spec.json"
DIVERSITY_FILE = "example_embeddings/domain={domain}/diversity.json"
PROGRAM_FILE = "programs/domain={domain}/program.json"
SCORE_FILE = "programs/domain={domain}/score.json"
# What `synth train` saves for a program file (its stem), and its score beside it.
TRAINED_FILE = "programs/domain={domain}/trained/{program}.json"
TRAINED_SCORE_FILE = "programs/domain={domain}/trained/{program}.score.json"
# What search uses for a domain (exact or the ANN index in the state folder) and the index's recall.
INDEX_FILE = "example_index/domain={domain}/index.json"
# A timeseries or events domain's recovery check and the scenario the generator model named.
QUALITY_FILE = "statistical_data/domain={domain}/quality.json"
SCENARIO_FILE = "statistical_data/domain={domain}/scenario.json"
# A domain's own gate calibration, from its review labels (`synth calibrate --domain D`).
REVIEW_CALIBRATION_FILE = "review_labels/calibration/domain={domain}/calibration.json"

StoragePath: TypeAlias = Path | UPath
"""A local ``Path`` or an fsspec-backed ``UPath``; both speak the pathlib API."""


class StorageError(OSError):
    """A warehouse location that cannot be used or written, with what to do about it."""


def storage_location(
    location: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> StoragePath:
    """A local ``Path`` for plain paths and ``file://`` URLs, a ``UPath`` for any other fsspec URL.

    Credentials and endpoints come from ``storage_options`` or the filesystem's own environment
    (e.g. ``AWS_ACCESS_KEY_ID`` / ``AWS_ENDPOINT_URL`` for s3fs, ``FSSPEC_S3_ENDPOINT_URL``).
    """
    text = os.fspath(location)
    if "://" not in text:
        return Path(text).expanduser().resolve()
    if text.startswith("file://"):
        return Path(text.removeprefix("file://")).expanduser().resolve()
    protocol = text.split("://", 1)[0]
    try:
        path = UPath(text, **(storage_options or {}))
        path.fs  # noqa: B018 - instantiating the filesystem surfaces a missing driver now, not mid-run
    except ImportError as e:
        raise StorageError(
            f"storage location {text!r}: the {protocol}:// filesystem driver is not installed ({e}). "
            "Install it into this environment; for s3:// that is s3fs (`pip install -e '.[s3]'`)."
        ) from e
    except ValueError as e:
        raise StorageError(
            f"storage location {text!r}: unknown protocol {protocol!r} ({e}). "
            "Use a local folder or an fsspec URL such as s3://bucket/prefix."
        ) from e
    return path


def atomic_write_bytes(path: StoragePath, data: bytes) -> None:
    if not isinstance(path, Path):
        # One PUT of the finished bytes: object stores never expose a half-written object. No mkdir:
        # stores have no folders, and s3fs's makedirs would create a missing (mistyped) bucket.
        try:
            path.write_bytes(data)
        except OSError as e:
            raise StorageError(
                f"could not write {path}: {e}. Check that the bucket exists and that this process has "
                "credentials for it (e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for "
                "an S3-compatible server). Nothing already written was changed; rerun once fixed (finished "
                "model calls are cached)."
            ) from e
        return
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


def atomic_write_text(path: StoragePath, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_parquet(path: StoragePath, table: pa.Table) -> None:
    if not isinstance(path, Path):
        # Buffered, not streamed: a streamed upload that fails midway would still be committed on close.
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        atomic_write_bytes(path, buffer.getvalue().to_pybytes())
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def move_file(source: StoragePath, target: StoragePath) -> None:
    """Move within one filesystem (a copy + delete on object stores, which have no rename)."""
    if isinstance(source, Path):
        Path(str(target)).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
        return
    source.fs.mv(source.path, UPath(target).path)


def fresh_listing(folder: StoragePath) -> StoragePath:
    """``folder`` with any cached listing dropped: s3fs/gcsfs cache directory listings for the life of
    the filesystem object, so a long-lived process (the sensor daemon) would never see new files."""
    if not isinstance(folder, Path):
        folder.fs.invalidate_cache(folder.path)
    return folder


# Rows decoded at a time when reading a Parquet file. pyarrow's ``read_table`` decodes a whole row
# group at once (a partition is one): a 100,000-row embeddings partition (153 MB of vectors) peaked
# at ~1 GB RSS; batches of 8,192 rows peaked at ~470 MB and read faster (0.8 s vs 1.5 s), and the
# other partitions likewise (raw_generations 0.19 s vs 0.61 s).
READ_BATCH_ROWS = 8192


def read_parquet(
    path: StoragePath, *, columns: list[str] | None = None, skip: Collection[str] = ()
) -> pa.Table:
    """The file as a table: only ``columns`` if given, without the ``skip`` columns (whichever of
    them the file has: older partitions may lack a newer column). Decoded in batches of
    ``READ_BATCH_ROWS`` rows, so the table comes back in chunks of that size."""
    if isinstance(path, Path):
        return _read_batched(pq.ParquetFile(path), columns, skip)
    with path.open("rb") as f:
        return _read_batched(pq.ParquetFile(f), columns, skip)


def _read_batched(file: pq.ParquetFile, columns: list[str] | None, skip: Collection[str]) -> pa.Table:
    schema = file.schema_arrow
    wanted = _kept(schema, columns, skip) if skip else columns
    if wanted is not None:
        missing = [name for name in wanted if schema.get_field_index(name) < 0]
        if missing:
            raise pa.ArrowInvalid(f"the Parquet file has no column(s) {missing}")
        schema = pa.schema([schema.field(name) for name in wanted], metadata=schema.metadata)
    batches = file.iter_batches(batch_size=READ_BATCH_ROWS, columns=wanted, use_threads=True)
    return pa.Table.from_batches(list(batches), schema=schema)


def _kept(schema: pa.Schema, columns: list[str] | None, skip: Collection[str]) -> list[str]:
    return [name for name in (columns or schema.names) if name not in skip]


def _read_part(fragment: Any, schema: pa.Schema) -> pa.Table:
    """One part of a hive-partitioned dataset in ``schema``: its own columns read in batches, the
    partition's key (``domain``) from its path, and nulls for a column the part predates."""
    import pyarrow.dataset as pds

    keys = pds.get_partition_keys(fragment.partition_expression)
    have = set(fragment.physical_schema.names)
    with fragment.filesystem.open_input_file(fragment.path) as f:
        table = _read_batched(pq.ParquetFile(f), [n for n in schema.names if n in have], ())
    columns = []
    for field in schema:
        if field.name in have:
            columns.append(table.column(field.name).cast(field.type))
        elif field.name in keys:
            columns.append(pa.array([keys[field.name]] * table.num_rows).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def read_rows_file(path: StoragePath) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` or ``.parquet`` file. A malformed JSON line becomes a row holding
    ``_error`` so that callers can reject it with a reason instead of failing the whole file."""
    if path.suffix == ".parquet":
        return read_parquet(path).to_pylist()
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


DEFAULT_REMOTE_STATE_DIR = ".synth_state"
# How long a writer waits for the DuckDB mirror's file lock before failing (no data is lost then).
DUCKDB_LOCK_WAIT_S = float(os.environ.get("SYNTH_DUCKDB_LOCK_WAIT_S", "300"))
# DuckDB's buffer pool for a mirror write (it spills to ``<mirror>.tmp`` beyond it). Its default is
# 80% of RAM, and it kept what it touched until the connection closed: mirroring a 100,000-row
# embeddings partition (173 MB of Arrow) raised the process's RSS by ~650 MB; with 256 MB by
# ~290 MB, in the same time. Rows of ~200 KB of text each do not fit it (DuckDB pins a vector of
# them at once): such a write is retried once with DuckDB's default pool.
DUCKDB_WRITE_MEMORY_LIMIT = os.environ.get("SYNTH_DUCKDB_MEMORY_LIMIT", "256MB")


def location_from_env(root: str | None = None) -> tuple[str, str | None]:
    """(root, state_dir): SYNTH_WAREHOUSE (default ./warehouse; a folder or an fsspec URL) and
    SYNTH_STATE_DIR (DuckDB, cache, journals; default: the root when local, ./.synth_state when
    remote). An explicit ``root`` wins over the environment."""
    return root or os.environ.get("SYNTH_WAREHOUSE", "warehouse"), os.environ.get("SYNTH_STATE_DIR") or None


class Warehouse:
    """Paths and read/write helpers: datasets under ``root``, DuckDB/cache/journals under ``state_dir``.

    ``root`` is a folder or an fsspec URL. ``state_dir`` defaults to the root when that is local, and
    to ``./.synth_state`` when it is remote (set it to a persistent volume so the DuckDB tables,
    the cache and half-finished journals survive the machine).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        state_dir: str | os.PathLike[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ):
        self.root: StoragePath = storage_location(root, storage_options)
        if state_dir is None:
            self.state_dir = (
                self.root if isinstance(self.root, Path) else Path(DEFAULT_REMOTE_STATE_DIR).resolve()
            )
            return
        state = storage_location(state_dir)
        if not isinstance(state, Path):
            raise StorageError(
                f"state dir {os.fspath(state_dir)!r} must be a local folder or mounted volume: DuckDB and "
                "the SQLite cache need file locks. Put datasets on object storage via the warehouse root."
            )
        self.state_dir = state

    @property
    def is_remote(self) -> bool:
        return not isinstance(self.root, Path)

    # ---------------------------------------------------------------- layout
    @property
    def duckdb_path(self) -> Path:
        return self.state_dir / "synth.duckdb"

    @property
    def cache_path(self) -> Path:
        return self.state_dir / "cache" / "responses.sqlite"

    @property
    def embedding_cache_path(self) -> Path:
        return self.state_dir / "cache" / "embeddings.sqlite"

    @property
    def check_cache_dir(self) -> Path:
        """Results of expensive checks by the digest of their inputs (see ``validation.ge_suite``)."""
        return self.state_dir / "cache" / "checks"

    def inflight_dir(self, asset: str, domain: str) -> Path:
        """Rows of a model-calling asset in progress (Parquet parts); on a real filesystem, always."""
        return self.state_dir / asset / f"domain={validate_domain_name(domain)}" / "_inflight"

    def progress_path(self, domain: str, shard: int | None = None) -> Path:
        """What the running asset of a domain (or one shard of it) reports about itself (see
        ``warehouse.progress``): a file per shard, since shards may run in different processes."""
        name = f"domain={validate_domain_name(domain)}" + ("" if shard is None else f".shard_{int(shard)}")
        return self.state_dir / "progress" / f"{name}.json"

    def staging_file(self, asset: str, domain: str) -> Path:
        """Where a partition file is built and checked before :meth:`publish_partition_file` makes it
        the partition: a run that fails its checks never touches the published partition."""
        return self.state_dir / ".staging" / asset / f"domain={validate_domain_name(domain)}" / PART_FILE

    def publish_partition_file(self, asset: str, domain: str, built: Path) -> StoragePath:
        """Make ``built`` (from :meth:`staging_file`) the partition's one file, atomically, and drop any
        other file of the partition. ``built`` is consumed."""
        path = self.partition_file(asset, domain)
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(built, path)
            except OSError:  # the state folder is on another filesystem: copy next to it, then rename
                tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
                shutil.copyfile(built, tmp)
                os.replace(tmp, path)
                built.unlink()
        else:
            atomic_write_bytes(path, built.read_bytes())
            built.unlink()
        for other in fresh_listing(path.parent).glob("*.parquet"):
            if other.name != PART_FILE:
                other.unlink()
        return path

    def programs_dir(self, domain: str) -> StoragePath:
        return self.root / "programs" / f"domain={validate_domain_name(domain)}"

    def partition_dir(self, asset: str, domain: str) -> StoragePath:
        return self.root / asset / f"domain={validate_domain_name(domain)}"

    def partition_file(self, asset: str, domain: str) -> StoragePath:
        return self.partition_dir(asset, domain) / PART_FILE

    def glob(self, asset: str) -> str:
        return str(self.root / asset / "*" / "*.parquet")

    def file(self, template: str, domain: str) -> StoragePath:
        """A per-domain file of the layout above, e.g. ``wh.file(PROGRAM_FILE, "api_development")``."""
        return self.root / template.format(domain=validate_domain_name(domain))

    def materialized_spec(self, domain: str) -> DomainSpec | None:
        """The spec as ``domain_schema`` last snapshotted it (thresholds resolved against the panel),
        or None before it has run. Assets and exports read this, never the YAML again."""
        payload = self.read_json(SPEC_FILE.format(domain=validate_domain_name(domain)))
        return DomainSpec.model_validate(payload["spec"]) if payload else None

    def threshold_source(self, domain: str, name: str) -> str | None:
        """Where the materialized spec's setting ``name`` came from (the spec, a calibration, a
        design default), as ``domain_schema`` recorded it; None when it recorded nothing."""
        payload = self.read_json(SPEC_FILE.format(domain=validate_domain_name(domain))) or {}
        found = (payload.get("threshold_sources") or {}).get(name)
        return None if found is None else str(found)

    @staticmethod
    def as_stored(spec: DomainSpec) -> DomainSpec:
        """``spec`` as :meth:`materialized_spec` will read it back after ``domain_schema`` stored it
        (JSON with sorted keys, so its fields come back in name order): what the run's prompts use."""
        return DomainSpec.model_validate(json.loads(json.dumps(spec.model_dump(mode="json"), sort_keys=True)))

    def diversity_stats(self, domain: str) -> dict[str, Any]:
        """What ``example_embeddings`` measured for the domain, or {} before it has run."""
        return self.read_json(DIVERSITY_FILE.format(domain=validate_domain_name(domain))) or {}

    def read_json(self, relative: str) -> Any | None:
        """A JSON file under the root, or None when it does not exist."""
        path = self.root / relative
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    # ---------------------------------------------------------------- parquet
    def write_partition(self, asset: str, domain: str, table: pa.Table) -> StoragePath:
        """Replace the partition's rows with ``table`` atomically. The ``domain`` column lives in the path."""
        if "domain" in table.column_names:
            table = table.drop(["domain"])
        path = self.partition_file(asset, domain)
        atomic_write_parquet(path, table)
        # Older part files (other writers or layouts) would duplicate rows: the partition is one file.
        for other in fresh_listing(path.parent).glob("*.parquet"):
            if other.name != PART_FILE:
                other.unlink()
        return path

    def write_dataset(
        self, asset: str, domain: str, table: pa.Table, *, column_types: dict[str, str] | None = None
    ) -> StoragePath:
        """Store an asset's partition in both places: the DuckDB mirror first, then the Parquet file.

        If the mirror cannot be updated (another process holds the file lock past the retries), the
        error propagates before the Parquet is touched, so the two never silently disagree.
        """
        self.replace_domain_rows(asset, domain, table, column_types=column_types)
        return self.write_partition(asset, domain, table)

    def read_partition(
        self, asset: str, domain: str, *, columns: list[str] | None = None, skip: Collection[str] = ()
    ) -> pa.Table | None:
        path = self.partition_file(asset, domain)
        if not path.is_file():
            return None
        return read_parquet(path, columns=columns, skip=skip)

    def partition_rows(self, asset: str, domain: str) -> int | None:
        """Rows in a partition, from the Parquet footer alone (no data read), or None when absent."""
        path = self.partition_file(asset, domain)
        if not path.is_file():
            return None
        if isinstance(path, Path):
            return int(pq.ParquetFile(path).metadata.num_rows)
        with path.open("rb") as f:
            return int(pq.ParquetFile(f).metadata.num_rows)

    def partition_domains(self, asset: str) -> list[str]:
        """The domains that have a partition of ``asset``."""
        folder = fresh_listing(self.root / asset)
        if not folder.is_dir():
            return []
        return sorted(
            p.name.removeprefix("domain=") for p in folder.glob("domain=*") if (p / PART_FILE).is_file()
        )

    def write_json(self, relative: str, payload: Any) -> StoragePath:
        path = self.root / relative
        atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
        return path

    # ---------------------------------------------------------------- duckdb
    @contextlib.contextmanager
    def duckdb(
        self, *, wait_s: float | None = None, memory_limit: str | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection to the mirror, for writers only (readers read the Parquet).

        DuckDB allows one writing process at a time; this waits for the file lock up to ``wait_s``,
        then fails saying so. Writers write the mirror before the Parquet, so a failure here leaves
        both on the previous version. ``memory_limit``: DuckDB's buffer pool (its default: 80% of RAM).
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        wait_s = DUCKDB_LOCK_WAIT_S if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        delay = 0.05
        config: dict[str, str | bool | int | float | list[str]] = (
            {"memory_limit": memory_limit} if memory_limit else {}
        )
        while True:
            try:
                conn = duckdb.connect(str(self.duckdb_path), config=config)
                break
            except duckdb.IOException as e:
                if "lock" not in str(e).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f"the DuckDB mirror {self.duckdb_path} stayed locked by another process for "
                        f"{wait_s:g}s ({e}). Nothing was written; rerun when that process is done "
                        "(a long dbt build or an open DuckDB shell on the file holds the lock)."
                    ) from e
                time.sleep(delay)
                delay = min(1.0, delay * 2)
        try:
            yield conn
        finally:
            conn.close()

    # ---------------------------------------------------------------- append-only datasets
    def dataset_dir(self, name: str) -> StoragePath:
        return self.root / name

    def append_dataset(self, name: str, domain: str, table: pa.Table) -> StoragePath:
        """Add ``table`` to an append-only dataset as a new part of the domain's partition."""
        part = f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.dataset_dir(name) / f"domain={validate_domain_name(domain)}" / part
        data = table.drop(["domain"]) if "domain" in table.column_names else table
        atomic_write_parquet(path, data)
        return path

    def read_dataset(
        self,
        name: str,
        *,
        columns: list[str] | None = None,
        domain: str | None = None,
        skip: Collection[str] = (),
    ) -> pa.Table | None:
        """Every part of a dataset (hive-partitioned by domain) as one table, or None when empty;
        with ``domain``, only that domain's parts are read; without the ``skip`` columns (whichever
        the parts have).

        Reads Parquet only: it never waits on the DuckDB mirror's lock."""
        import pyarrow.dataset as pds

        folder = fresh_listing(self.dataset_dir(name))
        if not folder.is_dir():
            return None
        pattern = f"domain={validate_domain_name(domain)}/*.parquet" if domain else "domain=*/*.parquet"
        files = sorted(str(f) if isinstance(f, Path) else f.path for f in folder.glob(pattern))
        if not files:
            return None
        filesystem = None
        if not isinstance(folder, Path):
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            filesystem = PyFileSystem(FSSpecHandler(folder.fs))
        base = str(folder) if isinstance(folder, Path) else folder.path
        dataset = pds.dataset(
            files, format="parquet", partitioning=pds.partitioning(flavor="hive"), partition_base_dir=base,
            filesystem=filesystem,
        )  # fmt: skip
        # Parts written before a column was added lack it: read every part against the union of their
        # schemas (pyarrow would otherwise take the first part's and drop the newer columns). A column
        # whose type was widened (int64 in old parts, float64 in new ones) is promoted, not refused.
        unified = pa.unify_schemas(
            [dataset.schema, *(fragment.physical_schema for fragment in dataset.get_fragments())],
            promote_options="permissive",
        )
        if unified != dataset.schema:
            dataset = pds.dataset(
                files, schema=unified, format="parquet", partitioning=pds.partitioning(flavor="hive"),
                partition_base_dir=base, filesystem=filesystem,
            )  # fmt: skip
        schema = dataset.schema
        wanted = _kept(schema, columns, skip)
        out = pa.schema([schema.field(name) for name in wanted])
        # Each part through ``_read_batched``, as ``read_parquet``: the dataset scanner decodes a
        # part's row group whole (a 100,000-row memory part of 159 MB peaked at ~930 MB RSS).
        return pa.concat_tables([_read_part(fragment, out) for fragment in dataset.get_fragments()])

    def sync_mirror(self, name: str, domains: Iterable[str]) -> None:
        """Make the DuckDB table ``name`` hold exactly the dataset's rows for ``domains`` (idempotent:
        a mirror that missed an earlier write is healed by the next one)."""
        data = self.read_dataset(name)
        if data is None:
            return
        for domain in sorted(set(domains)):
            rows = data.filter(pc.equal(data.column("domain"), domain))
            self.replace_domain_rows(name, domain, rows)

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
        self,
        table_name: str,
        domain: str,
        source: pa.Table | Path,
        *,
        column_types: dict[str, str] | None = None,
    ) -> None:
        """Replace one domain's rows in a DuckDB table in one transaction (create it on first use).

        ``source`` is an Arrow table (registered zero-copy) or a local Parquet file (DuckDB streams it),
        so rows never pass through Python objects on the way in. It runs under a bounded buffer pool
        (``DUCKDB_WRITE_MEMORY_LIMIT``); rows too wide for it are written again under DuckDB's default.
        """
        validate_domain_name(domain)
        if not table_name.replace("_", "").isalnum():
            raise ValueError(f"bad table name {table_name!r}")
        try:
            self._replace_domain_rows(table_name, domain, source, column_types, DUCKDB_WRITE_MEMORY_LIMIT)
        except (duckdb.OutOfMemoryException, duckdb.TransactionException) as e:
            if "memory" not in str(e).lower() and "pin block" not in str(e).lower():
                raise
            # Rolled back, nothing written: the same rows with room for them.
            self._replace_domain_rows(table_name, domain, source, column_types, None)

    def _replace_domain_rows(
        self,
        table_name: str,
        domain: str,
        source: pa.Table | Path,
        column_types: dict[str, str] | None,
        memory_limit: str | None,
    ) -> None:
        with self.duckdb(memory_limit=memory_limit) as conn:
            if isinstance(source, Path):
                file_columns = pq.read_schema(source).names
                names = [c for c in file_columns if c != "domain"] + ["domain"]
                columns = "* EXCLUDE (domain)" if "domain" in file_columns else "*"
                path = str(source).replace("'", "''")
                # ``domain`` passed validate_domain_name: a safe literal.
                conn.execute(
                    f"CREATE OR REPLACE TEMP VIEW incoming AS "
                    f"SELECT {columns}, '{domain}' AS domain FROM read_parquet('{path}')"
                )
            else:
                data = source.drop(["domain"]) if "domain" in source.column_names else source
                data = data.append_column("domain", pa.array([domain] * data.num_rows, pa.string()))
                names = data.column_names
                conn.register("incoming", data)
            casts = ", ".join(
                f'CAST("{c}" AS {column_types[c]}) AS "{c}"'
                if column_types and c in column_types
                else f'"{c}"'
                for c in names
            )
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
                if isinstance(source, Path):
                    conn.execute("DROP VIEW IF EXISTS incoming")
                else:
                    conn.unregister("incoming")
