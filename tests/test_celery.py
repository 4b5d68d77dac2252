"""The domain graph on a real distributed engine: dagster-celery with a Redis broker (Debian's
redis-server) and two Celery worker processes, against the fake OpenAI-compatible server.

Two domains are launched at once as ``synth_domain_celery`` runs (what a backfill does), one of them
with its generation and judging in four shards; every step is a Celery task. The test reads which
worker ran each step from the runs' engine events (both runs' steps, and each kind of shard step,
land on both workers), and checks that the rows equal a single-process run's of the same domains
against the same server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import materialize_domain
from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from tests.test_openai_compat import profile_file

pytest.importorskip(
    "dagster_celery", reason="the `distributed` extra is not installed (make setup installs it)"
)

REPO = Path(__file__).resolve().parent.parent
DOMAINS = ("api_development", "data_analysis")
TARGET = 6
WORKERS = ("synth-w1", "synth-w2")


@contextmanager
def _instance(home: Path) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _rows(warehouse: Path) -> list[tuple[str, str, str]]:
    return duckdb.sql(
        "select domain, example_id, example_json from read_parquet("
        f"'{warehouse}/validated_examples/*/*.parquet', hive_partitioning=true) order by all"
    ).fetchall()


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(FaultPlan(latency_s=0.01)) as server:
        yield server


@pytest.fixture
def celery_env(
    tmp_path: Path, redis_url: str, fake_server: FakeOpenAIServer, scripted_schemas_dir: Path
) -> dict[str, str]:
    """What the job's process and every worker share: broker, instance, warehouse, specs, profile."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    # One event-log database for all runs, created here before any process starts: per-run SQLite
    # files are created by whichever process (job or worker) writes first, and two racing to create
    # one fail ("table secondary_indexes already exists"). Across machines this is Postgres.
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "event_log_storage:\n  module: dagster._core.storage.event_log\n"
        "  class: ConsolidatedSqliteEventLogStorage\n"
        f"  config:\n    base_dir: {home / 'history'}\n"
    )
    with _instance(home) as instance:
        instance.add_dynamic_partitions("domain", list(DOMAINS))
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(home),
        "SYNTH_CELERY_BROKER": redis_url,
        "SYNTH_WAREHOUSE": str(tmp_path / "warehouse"),
        "SYNTH_SCHEMAS": str(scripted_schemas_dir),
        "SYNTH_PROFILE": str(profile_file(tmp_path, fake_server.base_url)),
    }


@pytest.fixture
def workers(celery_env: dict[str, str], tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two Celery worker processes of one task slot each, on the job's broker."""
    celery = Path(sys.executable).parent / "celery"
    procs = []
    for name in WORKERS:
        log = (tmp_path / f"{name}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    str(celery),
                    "-A",
                    "synth_pipelines.celery_worker",
                    "worker",
                    "--concurrency",
                    "1",
                    "--prefetch-multiplier",
                    "1",
                    "--pool",
                    "solo",
                    "-n",
                    f"{name}@%h",
                    "--loglevel",
                    "INFO",
                ],
                cwd=REPO,
                env=celery_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


LAUNCH = """
import sys
import dagster as dg
from synth_pipelines.definitions import resolved_synth_domain_celery_job
domain, target, shards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ops = {"problem_matrix": {"config": {"target_count": target}}}
if shards > 1:
    ops["raw_generations"] = {"config": {"shards": shards}}
    ops["validated_examples"] = {"config": {"shards": shards}}
with dg.DagsterInstance.get() as instance:
    result = dg.execute_job(
        dg.reconstructable(resolved_synth_domain_celery_job),
        instance=instance,
        tags={"dagster/partition": domain},
        run_config={"ops": ops},
    )
    print(result.run_id)
    sys.exit(0 if result.success else 1)
"""


def _workers_by_step(instance: dg.DagsterInstance) -> dict[tuple[str, str], set[str]]:
    """Per (domain, step key), the Celery workers that ran it, without their ``@host``."""
    ran: dict[tuple[str, str], set[str]] = {}
    for run in instance.get_runs():
        events = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
        for record in events:
            event = record.event_log_entry.dagster_event
            worker = event.engine_event_data.metadata.get("Celery worker") if event else None
            if worker is not None:
                key = (run.tags["dagster/partition"], str(record.event_log_entry.step_key))
                ran.setdefault(key, set()).add(str(worker.value).split("@")[0])
    return ran


def _launch(env: dict[str, str], domain: str, shards: int = 1) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, domain, str(TARGET), str(shards)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _single_process_rows(domains: tuple[str, ...], root: Path, schemas: Path, profile: str) -> list:
    """The same domains in one process, in another warehouse, against the same server."""
    for domain in domains:
        result = materialize_domain(
            domain,
            instance=dg.DagsterInstance.ephemeral(),
            target_count=TARGET,
            resources={
                "warehouse": WarehouseResource(root=str(root), schemas_dir=str(schemas)),
                "llm": LLMResource(profile=profile),
                "embedder": EmbedderResource(),
            },
        )
        assert result.success
    return _rows(root)


def test_two_domains_one_in_four_shards_run_on_two_celery_workers_and_equal_a_single_process_run(
    celery_env: dict[str, str],
    workers: list[subprocess.Popen[bytes]],
    fake_server: FakeOpenAIServer,
    scripted_schemas_dir: Path,
    tmp_path: Path,
) -> None:
    sharded, plain = DOMAINS
    started = time.monotonic()
    launches = [_launch(celery_env, sharded, shards=4), _launch(celery_env, plain)]
    for launch in launches:
        output, _ = launch.communicate(timeout=300)
        assert launch.returncode == 0, output.decode()[-3000:]
    assert all(w.poll() is None for w in workers), "a worker died"
    distributed_s = time.monotonic() - started

    with _instance(Path(celery_env["DAGSTER_HOME"])) as instance:
        ran = _workers_by_step(instance)
    by_domain: dict[str, set[str]] = {}
    for (domain, _step), names in ran.items():
        by_domain.setdefault(domain, set()).update(names)
    assert set(by_domain) == set(DOMAINS)
    assert set().union(*by_domain.values()) == set(WORKERS), by_domain  # both runs' steps spread out
    # The sharded domain's generation and judging shards were steps of their own, on both workers.
    for op in ("raw_generations.generate_shard", "validated_examples.judge_shard"):
        shard_steps = {step: names for (d, step), names in ran.items() if d == sharded and op in step}
        assert set(shard_steps) == {f"{op}[shard_{k}]" for k in range(4)}, ran
        assert set().union(*shard_steps.values()) == set(WORKERS), shard_steps

    # The shards' reports crossed between workers through the state folder every worker shares,
    # not through a worker's local Dagster storage.
    handed = {p.parent.name for p in (Path(celery_env["SYNTH_WAREHOUSE"]) / "step_outputs").rglob("result")}
    assert {f"validated_examples.judge_shard[shard_{k}]" for k in range(4)} <= handed, handed

    # Each worker loaded the step code, the embedding model and DSPy once, before its first step.
    for name in WORKERS:
        log = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert log.count("synth worker warm-up: step code, embedding model and DSPy loaded") == 1, log[-2000:]

    distributed = _rows(Path(celery_env["SYNTH_WAREHOUSE"]))
    assert {d for d, _, _ in distributed} == set(DOMAINS)
    single = _single_process_rows(
        DOMAINS, tmp_path / "single", scripted_schemas_dir, celery_env["SYNTH_PROFILE"]
    )
    assert single == distributed
    print(f"two domains (one in four shards) on two Celery workers: {distributed_s:.1f} s")
