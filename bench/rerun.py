"""``make bench-rerun``: an unchanged rerun of the demo domain through the Dagster job.

``dagster job execute`` runs ``synth_domain`` for ``api_development`` (16 examples, the bundled local
models, a fresh warehouse and instance), then runs it again with nothing changed. Each run is timed
as a whole command: process start, loading the code location, every asset and check. The rerun must
make zero model calls (every reply is cached) and take a fraction of the first run.

The last lines are ``rerun_wall_s=<seconds>``, ``rerun_model_calls=<n>`` and
``rerun_ratio=<rerun / first run>``.
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

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "api_development"
COUNT = 16

_MODEL_CALLS = """
import json, sys
import dagster as dg
instance = dg.DagsterInstance.get()
run = instance.get_runs(limit=1)[0]
calls = 0
for record in instance.all_logs(run.run_id):
    event = record.dagster_event
    if event is not None and event.event_type_value == "ASSET_MATERIALIZATION":
        value = event.materialization.metadata.get("model_calls")
        calls += int(getattr(value, "value", value) or 0)
steps = {
    s.step_key: round(s.end_time - s.start_time, 1)
    for s in instance.get_run_step_stats(run.run_id)
    if s.start_time and s.end_time
}
print(json.dumps({"status": run.status.value, "model_calls": calls, "step_seconds": steps}))
"""


def run_job(env: dict[str, str], config: Path) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m", "synth_pipelines.definitions",
         "-j", "synth_domain", "--tags", json.dumps({"dagster/partition": DOMAIN}), "-c", str(config)],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"dagster job execute failed:\n{done.stderr[-4000:]}")
    report = subprocess.run([sys.executable, "-c", _MODEL_CALLS], env=env, capture_output=True, text=True)
    return wall, json.loads(report.stdout)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-rerun-"))
    try:
        home = folder / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "SYNTH_WAREHOUSE": str(folder / "warehouse"),
            "SYNTH_PROFILE": "local",
            "PYTHONPATH": str(REPO),
        }
        env.pop("SYNTH_STATE_DIR", None)
        subprocess.run(
            [sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().add_dynamic_partitions("
             f"'domain', ['{DOMAIN}'])"],
            env=env, check=True,
        )  # fmt: skip
        config = folder / "run_config.json"  # JSON is YAML
        config.write_text(json.dumps({"ops": {"problem_matrix": {"config": {"target_count": COUNT}}}}))
        first, first_report = run_job(env, config)
        print(f"first run  {first:6.1f} s  {first_report}")
        again, again_report = run_job(env, config)
        print(f"rerun      {again:6.1f} s  {again_report}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"rerun_wall_s={again:.1f}")
    print(f"rerun_model_calls={again_report['model_calls']}")
    print(f"rerun_ratio={again / first:.3f}")


if __name__ == "__main__":
    main()
