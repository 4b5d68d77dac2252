"""A backfill of two domains through the Dagster daemon: the runs queue for the model pool.

It runs the way a scaled-out deployment does: the queued run coordinator in ``dagster-daemon``,
runs launched with ``dagster job launch`` (as the UI and backfills submit them), datasets in an S3
bucket (a moto server here, reached through s3fs with credentials from the environment), DuckDB and
the cache in a local state folder. With ``concurrency.pools.granularity: run`` the run waiting for
the ``llm`` pool stays QUEUED, with no process at all, until the other run finishes.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from synth_pipelines.runner import sync_partitions
from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from tests.s3 import bucket_keys
from tests.test_openai_compat import profile_file

REPO = Path(__file__).resolve().parent.parent
LOCATION = "synth_pipelines.definitions"
POOL_STEPS = {
    "seed_problems",
    "raw_generations.generate_shard[shard_0]",
    "validated_examples.judge_shard[shard_0]",
    "compiled_program",
}
IN_PROGRESS = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}
STARTING = dg.DagsterEventType.RUN_STARTING.value  # the event type's stored name
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def test_backfill_runs_queue_for_the_pool_in_the_daemon(
    tmp_path: Path, scripted_schemas_dir: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "concurrency:\n  pools:\n    granularity: run\n    default_limit: 1\n"
        "  runs:\n    max_concurrent_runs: 4\n"
        # The queue's tick (5 s by default) only decides how soon a waiting run is seen to be free.
        "run_queue:\n  dequeue_interval_seconds: 1\n"
    )
    bin_dir = Path(sys.executable).parent
    domains = ["api_development", "data_analysis"]
    with FakeOpenAIServer(FaultPlan(latency_s=0.01)) as server:
        for key, value in {
            "DAGSTER_HOME": str(home),
            "SYNTH_WAREHOUSE": f"s3://{s3_bucket}/warehouse",
            "SYNTH_STATE_DIR": str(tmp_path / "state"),
            "SYNTH_SCHEMAS": str(scripted_schemas_dir),
            "SYNTH_PROFILE": str(profile_file(tmp_path, server.base_url)),
        }.items():
            monkeypatch.setenv(key, value)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        instance = dg.DagsterInstance.get()
        sync_partitions(instance, scripted_schemas_dir)  # what `make partitions` does
        assert set(domains) <= set(instance.get_dynamic_partitions("domain"))
        daemon: subprocess.Popen[bytes] | None = None
        try:
            config = json.dumps({"ops": {"problem_matrix": {"config": {"target_count": 4}}}})
            launches = [  # submitted together, as a backfill does (each loads the code location)
                subprocess.Popen(
                    [
                        str(bin_dir / "dagster"),
                        "job",
                        "launch",
                        "-m",
                        LOCATION,
                        "-j",
                        "synth_domain",
                        "--tags",
                        json.dumps({"dagster/partition": domain}),
                        "--config-json",
                        config,
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                for domain in domains
            ]
            for launch in launches:
                output, _ = launch.communicate(timeout=120)
                assert launch.returncode == 0, output.decode()[-2000:]
            # The daemon starts with both runs already queued, so its first tick sees both: on a
            # fresh instance that is the tick where an unregistered pool would let both through.
            daemon = subprocess.Popen(
                [str(bin_dir / "dagster-daemon"), "run", "-m", LOCATION],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            queued_while_other_ran = False
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                runs = dg.DagsterInstance.from_config(str(home)).get_runs()
                statuses = [r.status for r in runs]
                in_progress = sum(s in IN_PROGRESS for s in statuses)
                if in_progress == 1 and dg.DagsterRunStatus.QUEUED in statuses:
                    queued_while_other_ran = True
                if len(runs) == len(domains) and all(s in DONE for s in statuses):
                    break
                time.sleep(0.5)
        finally:
            if daemon is not None:
                daemon.terminate()
                daemon.wait(30)
    instance = dg.DagsterInstance.from_config(str(home))  # a fresh view of what the runs wrote
    runs = instance.get_runs()
    results = {r.tags["dagster/partition"]: r for r in runs}
    assert set(results) == set(domains)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [r.status for r in runs]
    # The waiting run sat in the queue, with no process, until the other run was done with the pool.
    assert queued_while_other_ran
    first, second = sorted(runs, key=lambda r: _event_time(instance, r.run_id, STARTING))
    first_pool_done = max(
        record.timestamp
        for record in instance.all_logs(first.run_id)
        if record.dagster_event is not None
        and record.dagster_event.step_key in POOL_STEPS
        and record.dagster_event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE")
    )
    assert _event_time(instance, second.run_id, STARTING) >= first_pool_done - 0.05

    keys = bucket_keys(s3_bucket)
    for domain in domains:
        assert f"warehouse/validated_examples/domain={domain}/part-0.parquet" in keys
    with duckdb.connect(str(tmp_path / "state" / "synth.duckdb"), read_only=True) as conn:
        mirrored = dict(conn.execute("select domain, count(*) from raw_generations group by 1").fetchall())
    assert mirrored == {d: 4 for d in domains}  # both runs wrote the one state DuckDB

    # Steps in the pool never overlapped, across both runs.
    intervals = []
    for domain, result in results.items():
        starts: dict[str, float] = {}
        for record in instance.all_logs(result.run_id):
            event = record.dagster_event
            if event is None or event.step_key not in POOL_STEPS:
                continue
            if event.event_type_value == "STEP_START":
                starts[event.step_key] = record.timestamp
            elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                intervals.append((starts[event.step_key], record.timestamp, domain, event.step_key))
    intervals.sort()
    assert len(intervals) == 2 * len(POOL_STEPS), "\n".join(map(str, intervals))
    for (_, e1, d1, k1), (s2, _, d2, k2) in itertools.pairwise(intervals):
        if d1 != d2:
            assert s2 >= e1 - 0.05, f"{d1}/{k1} overlapped {d2}/{k2}"


def _event_time(instance: dg.DagsterInstance, run_id: str, event_type: str) -> float:
    return next(
        record.timestamp
        for record in instance.all_logs(run_id)
        if record.dagster_event is not None and record.dagster_event.event_type_value == event_type
    )
