"""The warehouse on object storage: fsspec URLs for datasets, a local state folder for DuckDB/cache.

The S3 tests talk real S3 over HTTP to a moto server on 127.0.0.1 through s3fs, the same driver a
production bucket uses; only the endpoint differs (AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import fsspec
import polars as pl
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from synth_pipelines.cli import app
from synth_pipelines.learning.outcomes import ingest_inbox
from synth_pipelines.learning.program import load_program
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import materialize_domain
from synth_pipelines.spec.loading import load_spec
from synth_pipelines.warehouse.storage import StorageError, Warehouse, storage_location
from tests.s3 import bucket_keys


# ------------------------------------------------------------------------------------- locations
def test_local_paths_and_file_urls_stay_plain_paths(tmp_path: Path) -> None:
    assert storage_location(str(tmp_path / "w")) == tmp_path / "w"
    assert storage_location(f"file://{tmp_path}/w") == tmp_path / "w"
    wh = Warehouse(tmp_path / "w")
    assert not wh.is_remote and wh.state_dir == wh.root  # one folder holds everything locally
    assert wh.duckdb_path == tmp_path / "w" / "synth.duckdb"


def test_unknown_protocol_and_missing_driver_say_what_to_do() -> None:
    with pytest.raises(StorageError, match=r"unknown protocol 'nosuch'.*s3://bucket/prefix"):
        storage_location("nosuch://bucket/x")
    with pytest.raises(StorageError, match=r"gcs:// filesystem driver is not installed.*gcsfs"):
        storage_location("gcs://bucket/x")


def test_state_dir_must_be_local(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="must be a local folder or mounted volume"):
        Warehouse("memory://w", state_dir="s3://bucket/state")
    wh = Warehouse(f"memory://{uuid.uuid4().hex}", state_dir=tmp_path / "state")
    assert wh.is_remote and wh.duckdb_path == tmp_path / "state" / "synth.duckdb"
    assert wh.cache_path.is_relative_to(tmp_path / "state")
    assert wh.inflight_dir("raw_generations", "api_development").is_relative_to(tmp_path / "state")
    assert wh.staging_file("raw_generations", "api_development").is_relative_to(tmp_path / "state")


# ------------------------------------------------------------------------------- memory filesystem
@pytest.fixture
def memory_warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(f"memory://wh-{uuid.uuid4().hex}", state_dir=tmp_path / "state")


def test_partitions_replace_and_never_duplicate_on_a_remote_root(memory_warehouse: Warehouse) -> None:
    wh = memory_warehouse
    wh.write_partition("validated_examples", "api_development", pa.table({"a": [1, 2], "domain": ["x", "x"]}))
    stray = wh.partition_dir("validated_examples", "api_development") / "part-old.parquet"
    stray.write_bytes(b"old layout")
    wh.write_partition("validated_examples", "api_development", pa.table({"a": [3]}))
    table = wh.read_partition("validated_examples", "api_development")
    assert table is not None and table.to_pylist() == [{"a": 3}]  # replaced; domain lives in the path
    assert not stray.exists()
    assert wh.read_partition("validated_examples", "data_analysis") is None
    wh.write_json("example_embeddings/domain=api_development/diversity.json", {"d": 0.5})
    assert wh.read_json("example_embeddings/domain=api_development/diversity.json") == {"d": 0.5}
    assert wh.read_json("example_embeddings/domain=nope/diversity.json") is None
    # Nothing but the DuckDB file (when used) belongs in the state folder.
    assert not wh.state_dir.exists() or not list(wh.state_dir.rglob("*.parquet"))


@pytest.mark.parametrize("remote", [False, True])
def test_a_partition_is_read_without_the_columns_a_step_skips(
    remote: bool, memory_warehouse: Warehouse, tmp_path: Path
) -> None:
    """What validation reads of raw_generations: every column but the raw replies. A skipped
    column the file does not have (an older partition) is no error; ``columns`` still narrow."""
    wh = memory_warehouse if remote else Warehouse(tmp_path / "w")
    wh.write_partition(
        "raw_generations", "d", pa.table({"id": ["a", "b"], "raw_text": ["x" * 50, "y"], "n": [1, 2]})
    )
    table = wh.read_partition("raw_generations", "d", skip={"raw_text", "not_in_this_file"})
    assert table is not None and table.column_names == ["id", "n"] and table.column("n").to_pylist() == [1, 2]
    narrowed = wh.read_partition("raw_generations", "d", columns=["n", "raw_text"], skip={"raw_text"})
    assert narrowed is not None and narrowed.column_names == ["n"]
    full = wh.read_partition("raw_generations", "d")
    assert full is not None and full.column_names == ["id", "raw_text", "n"]


def test_outcome_inbox_on_a_remote_root(memory_warehouse: Warehouse) -> None:
    wh = memory_warehouse
    inbox = wh.root / "outcomes_inbox"
    good = {"outcome_id": "o1", "domain": "api_development", "success": True, "cell_id": "c1"}
    (inbox / "batch.jsonl").write_text(json.dumps(good) + "\n" + '{"domain": "api_development"}\n')
    reports = ingest_inbox(wh, known_domains={"api_development"})
    assert reports["batch.jsonl"].accepted == 1 and len(reports["batch.jsonl"].rejected) == 1
    assert not (inbox / "batch.jsonl").exists()
    assert (inbox / "processed" / "batch.jsonl").exists()
    assert (inbox / "processed" / "batch.jsonl.rejected.json").exists()
    with duckdb.connect(str(wh.duckdb_path), read_only=True) as conn:
        assert conn.execute("select count(*) from agent_outcomes").fetchone()[0] == 1


# ------------------------------------------------------------------------------------------- S3
def test_full_graph_with_the_warehouse_on_s3(
    s3_bucket: str, tmp_path: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    """Every dataset lands in the bucket, DuckDB/cache stay in the state folder, a rerun is free, and
    consumers read the Parquet from S3 with DuckDB (through fsspec) and polars."""
    root, state = f"s3://{s3_bucket}/synth", tmp_path / "state"
    resources = {
        "warehouse": WarehouseResource(
            root=root, state_dir=str(state), schemas_dir=str(scripted_schemas_dir)
        ),
        "llm": LLMResource(profile="local"),
        "embedder": EmbedderResource(),
    }
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_domain("api_development", instance=instance, target_count=8, resources=resources)
    assert result.success
    keys = bucket_keys(s3_bucket)
    for asset in ("seed_problems", "problem_matrix", "raw_generations", "validated_examples",
                  "rejected_examples", "example_embeddings"):  # fmt: skip
        assert f"synth/{asset}/domain=api_development/part-0.parquet" in keys, asset
    assert "synth/domain_schema/domain=api_development/spec.json" in keys
    assert "synth/programs/domain=api_development/program.json" in keys
    assert not any(k.endswith((".duckdb", ".sqlite", ".jsonl")) for k in keys)  # state is not in the bucket
    assert (state / "synth.duckdb").is_file() and (state / "cache" / "responses.sqlite").is_file()
    assert not list(state.rglob("*.parquet"))
    mats = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert mats["validated_examples"]["path"].value.startswith(f"s3://{s3_bucket}/synth/")

    con = duckdb.connect()
    con.register_filesystem(fsspec.filesystem("s3"))
    glob = f"{root}/validated_examples/*/*.parquet"
    from_s3 = con.sql(
        f"select example_id, domain from read_parquet('{glob}', hive_partitioning=true)"
    ).fetchall()
    with duckdb.connect(str(state / "synth.duckdb"), read_only=True) as local:
        mirrored = local.execute("select example_id, domain from validated_examples").fetchall()
    assert sorted(from_s3) == sorted(mirrored) and len(from_s3) >= 2
    frame = pl.read_parquet(f"{root}/validated_examples/domain=api_development/part-0.parquet")
    assert frame.height == len(from_s3)

    wh = resources["warehouse"].get()
    spec = load_spec(scripted_schemas_dir / "api_development.yaml").spec
    state_path = wh.programs_dir("api_development") / "program.json"
    program = load_program(spec, state_path)
    saved_demos = json.loads(state_path.read_text())["predict"]["demos"]
    assert len(program.predict.demos) == len(saved_demos) > 0  # the state round-trips from the bucket
    first = program.predict.demos[0]
    assert dict(first.toDict() if hasattr(first, "toDict") else first) == saved_demos[0]

    calls = sum(b.calls for b in scripted_backends.values())
    again = materialize_domain("api_development", instance=instance, target_count=8, resources=resources)
    assert again.success and sum(b.calls for b in scripted_backends.values()) == calls  # all cached
    assert sorted(
        con.sql(f"select example_id, domain from read_parquet('{glob}', hive_partitioning=true)").fetchall()
    ) == sorted(from_s3)

    runner = CliRunner()
    cli_env = {"SYNTH_STATE_DIR": str(state), "SYNTH_SCHEMAS": str(scripted_schemas_dir)}
    status = runner.invoke(app, ["status", "--warehouse", root], env=cli_env)
    assert status.exit_code == 0, status.output
    assert "api_development" in status.output
    out = f"s3://{s3_bucket}/exports/sft"
    exported = runner.invoke(
        app, ["export", "--domain", "api_development", "--format", "sft", "--out", out, "--warehouse", root],
        env=cli_env,
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output
    sft = pl.read_parquet(f"{out}/api_development_sft.parquet")
    assert sft.height == len(from_s3) and "messages" in sft.columns
    assert "exports/sft/README.md" in bucket_keys(s3_bucket)


def test_missing_bucket_fails_with_the_path_and_what_to_do(s3_bucket: str, tmp_path: Path) -> None:
    wh = Warehouse(f"s3://{s3_bucket}-missing/synth", state_dir=tmp_path / "state")
    with pytest.raises(
        StorageError, match=r"could not write s3://.*-missing/synth/.*bucket exists.*credentials"
    ):
        wh.write_partition("validated_examples", "api_development", pa.table({"a": [1]}))


def test_inbox_sees_files_dropped_by_other_writers(s3_bucket: str, tmp_path: Path) -> None:
    """s3fs caches listings per filesystem object; the sensor's long-lived process must still see new
    files that another tool uploaded."""
    import boto3

    wh = Warehouse(f"s3://{s3_bucket}/synth", state_dir=tmp_path / "state")
    client = boto3.client("s3")

    def drop(name: str, outcome_id: str) -> None:
        row = {"outcome_id": outcome_id, "domain": "api_development", "success": False}
        client.put_object(Bucket=s3_bucket, Key=f"synth/outcomes_inbox/{name}", Body=json.dumps(row).encode())

    drop("a.jsonl", "o1")
    inbox = wh.root / "outcomes_inbox"
    assert [p.name for p in inbox.iterdir()] == ["a.jsonl"]  # a previous tick listed the inbox: now cached
    drop("b.jsonl", "o2")  # uploaded behind s3fs's back
    assert set(ingest_inbox(wh)) == {"a.jsonl", "b.jsonl"}
    processed = {f"synth/outcomes_inbox/processed/{name}" for name in ("a.jsonl", "b.jsonl")}
    assert processed <= bucket_keys(s3_bucket)


def test_a_mirror_write_runs_under_a_bounded_duckdb_buffer_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DuckDB's default pool is 80% of RAM and it keeps what it touched until the connection closes:
    # at 100,000 rows the mirror write alone added ~650 MB to the run's RSS.
    from synth_pipelines.warehouse import storage

    wh = Warehouse(tmp_path / "warehouse")
    pools: list[str] = []
    connect = Warehouse.duckdb

    def recorded(self: Warehouse, **kwargs: object):  # the pool each write's connection ran under
        manager = connect(self, **kwargs)
        conn = manager.__enter__()
        pools.append(conn.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
        return _Entered(manager, conn)

    monkeypatch.setattr(Warehouse, "duckdb", recorded)
    wh.replace_domain_rows("small_rows", "demo", pa.table({"example_id": ["a", "b"]}))
    assert len(pools) == 1 and pools[0].endswith("MiB") and 200 < float(pools[0].split()[0]) < 300, pools
    # Beyond the limit DuckDB spills, but rows too wide for the pool fail in it: such a write is
    # retried under DuckDB's default pool, so the partition is still written whole (an 8 MB pool
    # and 20 MB of rows here, which fail in it, to keep the test quick).
    monkeypatch.setattr(storage, "DUCKDB_WRITE_MEMORY_LIMIT", "8MB")
    pools.clear()
    rows = 4_000
    table = _wide_rows(rows)
    wh.replace_domain_rows("big_rows", "demo", table)
    assert len(pools) == 2 and pools[0].endswith("MiB") and pools[1].endswith("GiB"), pools
    wh.replace_domain_rows("big_rows", "demo", table)  # replaced, not appended
    monkeypatch.undo()
    with duckdb.connect(str(wh.duckdb_path), read_only=True) as conn:
        count, longest, last = conn.execute(
            "SELECT count(*), max(length(raw_text)), max(example_id) FROM big_rows WHERE domain = 'demo'"
        ).fetchone()
    assert (count, longest, last) == (rows, 5000, "e003999")


class _Entered:
    """A context manager already entered: hands ``conn`` to the ``with`` and exits ``manager``."""

    def __init__(self, manager: Any, conn: duckdb.DuckDBPyConnection):
        self.manager, self.conn = manager, conn

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.manager.__exit__(*exc)


def _wide_rows(rows: int) -> pa.Table:
    return pa.table(
        {
            "example_id": [f"e{i:06d}" for i in range(rows)],
            "raw_text": pa.array([f"{i:08d}" * 625 for i in range(rows)]),  # 5,000 chars a row
        }
    )
