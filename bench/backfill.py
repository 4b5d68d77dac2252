"""``make bench-backfill``: a 4-domain backfill through the Dagster daemon, before and after.

Four copies of the ``api_development`` spec are launched at once as runs of ``synth_domain``
(``dagster job launch``, as a backfill or the UI does) against the fake OpenAI server at 200 ms.
The model pool ``llm`` has a limit of 1, as for the embedded models on a small machine.

* before: pools at op granularity and the job's steps in subprocesses (the old code location,
  with dbt on its import path). Every run starts at once; the runs waiting for the pool sit in
  Dagster's multiprocess executor loop.
* after: pools at run granularity and the in-process job. Waiting runs stay queued in the daemon.

It reports the wall time and the CPU seconds of the daemon and every run process, and how many
runs were in progress at the same time. The last lines are ``backfill_cpu_ratio_after_before=`` and
``backfill_wall_ratio_after_before=``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.common import start_server, stop_server
from bench.scale import write_profile

REPO = Path(__file__).resolve().parent.parent
DOMAINS = ["backfill_a", "backfill_b", "backfill_c", "backfill_d"]
COUNT = 24
INSTANCE = {
    "before": {"concurrency": {"pools": {"default_limit": 1}, "runs": {"max_concurrent_runs": 4}}},
    "after": {
        "concurrency": {
            "pools": {"default_limit": 1, "granularity": "run"},
            "runs": {"max_concurrent_runs": 4},
        }
    },
}
LOCATION = {"before": "bench.backfill_before", "after": "synth_pipelines.definitions"}


def write_schemas(folder: Path) -> Path:
    schemas = folder / "schemas"
    schemas.mkdir()
    # The eval sets the shipped specs check their rows against (decontamination) travel with them.
    shutil.copytree(REPO / "schemas" / "eval", schemas / "eval")
    base = yaml.safe_load((REPO / "schemas" / "api_development.yaml").read_text())
    for domain in DOMAINS:
        spec = {**base, "domain": domain, "name": domain}
        spec["validation"] = {**base.get("validation", {}), "diversity_threshold": 0.0}
        (schemas / f"{domain}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return schemas


def run_variant(variant: str, base_url: str) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-backfill-{variant}-"))
    home = folder / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"telemetry": {"enabled": False}, **INSTANCE[variant]}))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SYNTH_WAREHOUSE": str(folder / "warehouse"),
        "SYNTH_SCHEMAS": str(write_schemas(folder)),
        "SYNTH_PROFILE": str(write_profile(folder, base_url)),
        "PYTHONPATH": str(REPO),
    }
    env.pop("SYNTH_STATE_DIR", None)
    bin_dir = Path(sys.executable).parent
    try:
        subprocess.run(
            [sys.executable, "-c", _ADD_PARTITIONS, json.dumps(DOMAINS)], env=env, check=True, cwd=REPO
        )
        daemon = subprocess.Popen(
            [str(bin_dir / "dagster-daemon"), "run", "-m", LOCATION[variant]],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.perf_counter()
        config = json.dumps({"ops": {"problem_matrix": {"config": {"target_count": COUNT}}}})
        for domain in DOMAINS:
            subprocess.run(
                [str(bin_dir / "dagster"), "job", "launch", "-m", LOCATION[variant], "-j", "synth_domain",
                 "--tags", json.dumps({"dagster/partition": domain}), "--config-json", config],
                env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        cpu, peak_in_progress, statuses = _watch(daemon, env)
        wall = time.perf_counter() - started
        daemon.terminate()
        daemon.wait(30)
        waiting = subprocess.run([sys.executable, "-c", _WAITING], env=env, capture_output=True, text=True)
        return {
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_runs_in_progress": peak_in_progress,
            "statuses": statuses,
            **json.loads(waiting.stdout or "{}"),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_ADD_PARTITIONS = """
import json, sys
import dagster as dg
dg.DagsterInstance.get().add_dynamic_partitions("domain", json.loads(sys.argv[1]))
"""

_STATUS = """
import json
import dagster as dg
runs = dg.DagsterInstance.get().get_runs()
print(json.dumps([r.status.value for r in runs]))
"""

# How long each run existed as a process before the pool was free for it: the time from its
# RUN_STARTING to the end of the previous run's last pool step (0 when it started after it).
_WAITING = """
import json
import dagster as dg
POOL = {"seed_problems", "raw_generations", "validated_examples", "compiled_program"}
instance = dg.DagsterInstance.get()
def events(run_id):
    return [(r.timestamp, r.dagster_event) for r in instance.all_logs(run_id) if r.dagster_event is not None]
spans = []
for run in instance.get_runs():
    evs = events(run.run_id)
    starting = next(t for t, e in evs if e.event_type_value == dg.DagsterEventType.RUN_STARTING.value)
    pool = [t for t, e in evs if e.step_key in POOL and e.event_type_value in ("STEP_START", "STEP_SUCCESS")]
    spans.append((starting, min(pool), max(pool)))
spans.sort()
waiting = [max(0.0, spans[i - 1][2] - spans[i][0]) for i in range(1, len(spans))]
print(json.dumps({"process_seconds_before_pool_was_free": round(sum(waiting), 1)}))
"""


def _watch(daemon: subprocess.Popen[bytes], env: dict[str, str]) -> tuple[float, int, list[str]]:
    """Sample the CPU of the daemon and its descendants until every run has finished."""
    cpu_by_pid: dict[int, float] = {}
    root = psutil.Process(daemon.pid)
    peak = 0
    statuses: list[str] = []
    deadline = time.monotonic() + 3600
    last_poll = 0.0
    while time.monotonic() < deadline:
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                cpu_by_pid[proc.pid] = max(cpu_by_pid.get(proc.pid, 0.0), times.user + times.system)
            except psutil.Error:
                continue
        if time.monotonic() - last_poll > 1:
            last_poll = time.monotonic()
            done = subprocess.run([sys.executable, "-c", _STATUS], env=env, capture_output=True, text=True)
            statuses = json.loads(done.stdout or "[]")
            peak = max(peak, sum(s in ("STARTING", "STARTED") for s in statuses))
            finished = [s for s in statuses if s in ("SUCCESS", "FAILURE", "CANCELED")]
            if len(statuses) == len(DOMAINS) and len(finished) == len(DOMAINS):
                break
        time.sleep(0.25)
    return sum(cpu_by_pid.values()), peak, statuses


def main() -> None:
    server, base_url = start_server(0.2)
    results = {}
    try:
        for variant in ("before", "after"):
            results[variant] = r = run_variant(variant, base_url)
            print(
                f"{variant:<7} wall {r['wall_s']:6.1f} s  CPU {r['cpu_s']:6.1f} s  "
                f"(daemon + runs; {r['cpu_s'] / r['wall_s']:.2f} cores busy on average)  "
                f"runs in progress at once: {r['peak_runs_in_progress']}; seconds runs spent as processes "
                f"waiting for the pool: {r.get('process_seconds_before_pool_was_free')}; "
                f"final: {r['statuses']}"
            )
    finally:
        stop_server(server)
    before, after = results["before"], results["after"]
    print(f"machine: {os.cpu_count()} cores; {len(DOMAINS)} domains x {COUNT} examples; pool limit 1")
    print(f"backfill_cpu_ratio_after_before={after['cpu_s'] / before['cpu_s']:.2f}")
    print(f"backfill_wall_ratio_after_before={after['wall_s'] / before['wall_s']:.2f}")


if __name__ == "__main__":
    main()
