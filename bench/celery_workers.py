"""``make bench-celery``: the domain graph on dagster-celery with one worker, then with two, in one run.

Each round starts a throwaway redis-server (Debian's), K Celery worker processes of one task slot
each (``celery -A synth_pipelines.celery_worker worker``), and launches ``synth_domain_celery``
runs against the project's fake OpenAI-compatible server (its own process) at 300 ms latency with
one generator and two judges at ``max_concurrency: 64``. Three scenarios, each on one worker and then
on two:

* two domains at once, as a backfill does: with one worker the two runs' steps queue for the one
  slot; with two they run side by side;
* one domain whose generation and judging are split into four shards
  (``ops.raw_generations.config.shards`` and ``ops.validated_examples.config.shards``): the shard
  steps spread over the workers; embeddings, the index and the program stay one step;
* that domain again with each worker capped at 16 calls per model (64 otherwise): the endpoint
  allows more than one worker uses, as when a provider caps each client, so a second worker adds
  calls in flight instead of competing for this machine's two cores.

The last lines are::

    celery_1_worker_s=<wall seconds, both domains, one worker>
    celery_2_workers_s=<wall seconds, both domains, two workers>
    celery_2_vs_1=<two workers / one worker>          (0.5 is perfect; issue 26 asks <= 0.6)
    shards_1_worker_s=<wall seconds, one domain in four shards, one worker>
    shards_2_workers_s=<the same on two workers>
    shards_2_vs_1=<two workers / one worker>
    capped_shards_1_worker_s=<the four-shard domain, each worker capped at 16 calls per model>
    capped_shards_2_workers_s=<the same on two workers>
    capped_shards_2_vs_1=<two workers / one worker>          (issue 26 asks <= 0.6)
    capped_shards_4000_...=<the same three at twice the rows>

Each round starts its clock when every worker has logged ``ready`` (after its warm-up, see
``synth_pipelines/celery_worker.py``).

``CELERY_BENCH_COUNT`` sets the rows per domain (default 2,000); ``CELERY_BENCH_ONLY=capped`` runs
the third scenario alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import start_server, stop_server
from bench.scale import CONCURRENCY, write_profile
from synth_pipelines.testing.redis_server import redis_server

REPO = Path(__file__).resolve().parent.parent
DOMAINS = ("api_development", "data_analysis")
LATENCY_S = 0.3
# The third scenario: each worker may call each model this many at once, and the endpoint serves
# both workers' calls (a provider key's concurrency cap per worker process, not the machine's CPU,
# is what bounds one worker).
CAPPED_CONCURRENCY = 16
COUNT = int(os.environ.get("CELERY_BENCH_COUNT", "2000"))
# The capped scenario also runs at twice the rows: the per-domain steps (screening, publishing,
# checks, embeddings, the program) are a fixed ~20 s whatever the size, so the ratio depends on how
# much of the run the shards are (0.5 + fixed / (2 x one-worker time)).
CAPPED_COUNTS = (COUNT, 2 * COUNT)

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
    stats = instance.get_run_step_stats(result.run_id)
    steps = sorted((s.start_time or 0, s.step_key, (s.end_time or 0) - (s.start_time or 0)) for s in stats)
    run = instance.get_run_record_by_id(result.run_id)
    zero = run.start_time if run and run.start_time else steps[0][0]
    # Per step: its start, from the run's start, and its seconds.
    print("steps: " + ", ".join(f"{key} @{start - zero:.1f} {secs:.1f}s" for start, key, secs in steps))
    sys.exit(0 if result.success else 1)
"""


def write_schemas(folder: Path) -> Path:
    """The two shipped specs with thresholds where the fake server's random text mostly passes."""
    schemas = folder / "schemas"
    schemas.mkdir()
    # The eval sets the shipped specs check their rows against (decontamination) travel with them.
    shutil.copytree(REPO / "schemas" / "eval", schemas / "eval")
    for domain in DOMAINS:
        spec = yaml.safe_load((REPO / "schemas" / f"{domain}.yaml").read_text())
        spec.setdefault("validation", {}).update(
            diversity_threshold=0.0,
            consensus_threshold=0.2,
            min_pass_rate=0.5,
            on_topic_threshold=-1.0,
            field_agreement_threshold=-1.0,
        )
        spec.pop("rules", None)
        (schemas / f"{domain}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return schemas


def environment(folder: Path, broker: str, base_url: str, concurrency: int) -> dict[str, str]:
    home = folder / "dagster_home"
    home.mkdir()
    # One event-log database created before any process starts (per-run SQLite files race when the
    # job and a worker create the same one); across machines this is Postgres.
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "event_log_storage:\n  module: dagster._core.storage.event_log\n"
        "  class: ConsolidatedSqliteEventLogStorage\n"
        f"  config:\n    base_dir: {home / 'history'}\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(home),
        "SYNTH_CELERY_BROKER": broker,
        "SYNTH_WAREHOUSE": str(folder / "warehouse"),
        "SYNTH_SCHEMAS": str(write_schemas(folder)),
        "SYNTH_PROFILE": str(write_profile(folder, base_url, concurrency)),
    }
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, dagster as dg\nwith dg.DagsterInstance.get() as i:\n"
            "    i.add_dynamic_partitions('domain', sys.argv[1:])",
            *DOMAINS,
        ],
        env=env,
        check=True,
    )
    return env


def wait_ready(folder: Path, workers: int, timeout_s: float = 120.0) -> None:
    """Until each worker's log says it is ready (Celery logs ``ready.`` after its warm-up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = [(folder / f"worker{i}.log").read_text(errors="replace") for i in range(workers)]
        if all(" ready." in log for log in logs):
            return
        time.sleep(0.2)
    raise SystemExit(f"the Celery workers were not ready within {timeout_s:.0f} s; see {folder}/worker*.log")


def run_round(
    workers: int,
    base_url: str,
    domains: tuple[str, ...] = DOMAINS,
    shards: int = 1,
    concurrency: int = CONCURRENCY,
    count: int = COUNT,
) -> float:
    """Wall seconds for ``domains``' runs (at once) with ``workers`` Celery workers, in a fresh
    warehouse, each worker calling each model at most ``concurrency`` at once."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-celery-{workers}-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with redis_server() as broker:
            env = environment(folder, broker, base_url, concurrency)
            celery = Path(sys.executable).parent / "celery"
            for i in range(workers):
                log = (folder / f"worker{i}.log").open("wb")
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
                            f"bench{i}@%h",
                            "--loglevel",
                            "INFO",
                        ],
                        cwd=REPO,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            # The clock starts when every worker is up (connected and warmed up, as long-lived
            # workers are), not while they are still loading.
            wait_ready(folder, workers)
            started = time.perf_counter()
            launches = [
                subprocess.Popen(
                    [sys.executable, "-c", LAUNCH, domain, str(count), str(shards)],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                for domain in domains
            ]
            for launch in launches:
                output, _ = launch.communicate()
                if launch.returncode != 0:
                    raise SystemExit(f"a synth_domain_celery run failed:\n{output.decode()[-4000:]}")
                steps = [line for line in output.decode().splitlines() if line.startswith("steps: ")]
                print(f"  {workers} worker(s): {steps[-1] if steps else 'no step timings'}", flush=True)
            return time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    server, base_url = start_server(LATENCY_S)
    one_domain = DOMAINS[:1]
    only_capped = os.environ.get("CELERY_BENCH_ONLY") == "capped"
    one = two = shards_one = shards_two = float("nan")
    try:
        if not only_capped:
            one = run_round(1, base_url)
            print(f"one worker: {one:.1f} s", flush=True)
            two = run_round(2, base_url)
            print(f"two workers: {two:.1f} s", flush=True)
            shards_one = run_round(1, base_url, one_domain, shards=4)
            print(f"one domain in four shards, one worker: {shards_one:.1f} s", flush=True)
            shards_two = run_round(2, base_url, one_domain, shards=4)
            print(f"one domain in four shards, two workers: {shards_two:.1f} s", flush=True)
        capped: dict[int, tuple[float, float]] = {}
        for count in CAPPED_COUNTS:
            capped_one = run_round(
                1, base_url, one_domain, shards=4, concurrency=CAPPED_CONCURRENCY, count=count
            )
            print(f"{count} rows, {CAPPED_CONCURRENCY} calls/model/worker, one worker: {capped_one:.1f} s")
            capped_two = run_round(
                2, base_url, one_domain, shards=4, concurrency=CAPPED_CONCURRENCY, count=count
            )
            print(f"the same, two workers: {capped_two:.1f} s", flush=True)
            capped[count] = (capped_one, capped_two)
    finally:
        stop_server(server)
    print(f"\ncelery_1_worker_s={one:.1f}\ncelery_2_workers_s={two:.1f}\ncelery_2_vs_1={two / one:.2f}")
    print(
        f"shards_1_worker_s={shards_one:.1f}\nshards_2_workers_s={shards_two:.1f}\n"
        f"shards_2_vs_1={shards_two / shards_one:.2f}"
    )
    for count, (capped_one, capped_two) in capped.items():
        suffix = "" if count == COUNT else f"_{count}"
        print(
            f"capped_shards{suffix}_1_worker_s={capped_one:.1f}\n"
            f"capped_shards{suffix}_2_workers_s={capped_two:.1f}\n"
            f"capped_shards{suffix}_2_vs_1={capped_two / capped_one:.3f}"
        )


if __name__ == "__main__":
    main()
