"""``domain_spec_sensor``: new or changed files in ``schemas/`` become partitions and runs."""

import json
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel

from synth_pipelines.jobs import job_name_for, synth_domain_job, synth_statistical_job
from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME
from synth_pipelines.resources import WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL, ensure_pool_limit
from synth_pipelines.spec.model import SpecError, discover_specs, load_spec
from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name


class SpecRun(BaseModel):
    """One run to request: the domain, the spec file's hash, and how many changes of that domain's
    spec this is (so that reverting to an earlier file is a new run, not a duplicate key)."""

    domain: str
    file_hash: str
    sequence: int
    job_name: str = "synth_domain"  # synth_statistical for timeseries and events specs

    @property
    def run_key(self) -> str:
        return f"{self.domain}:{self.sequence}:{self.file_hash[:16]}"


class SpecPlan(BaseModel):
    """What one sensor tick decided: partitions to add, runs to request, files skipped (and why)."""

    new_partitions: list[str]
    runs: list[SpecRun]
    skipped: dict[str, str]
    cursor: dict[str, dict[str, Any]]


def _cursor_entry(value: Any) -> dict[str, Any]:
    # Cursors written before the sequence existed held the bare hash.
    return {"hash": value, "sequence": 1} if isinstance(value, str) else dict(value)


def plan_spec_runs(
    schemas_dir: str | Path, existing_partitions: set[str], cursor: dict[str, Any]
) -> SpecPlan:
    """Pure decision logic: which valid specs are new or changed since the cursor
    (domain -> {hash, sequence})."""
    new_partitions: list[str] = []
    runs: list[SpecRun] = []
    skipped: dict[str, str] = {}
    next_cursor = {domain: _cursor_entry(value) for domain, value in cursor.items()}
    for domain, path in discover_specs(schemas_dir).items():
        try:
            validate_domain_name(domain, source=str(path))
            loaded = load_spec(path)
        except (UnsafeDomainError, SpecError) as e:
            skipped[str(path)] = str(e)
            continue
        if domain not in existing_partitions:
            new_partitions.append(domain)
        seen = next_cursor.get(domain)
        if seen is None or seen["hash"] != loaded.file_hash:
            sequence = (seen["sequence"] if seen else 0) + 1
            runs.append(
                SpecRun(
                    domain=domain,
                    file_hash=loaded.file_hash,
                    sequence=sequence,
                    job_name=job_name_for(loaded.spec.type),
                )
            )
            next_cursor[domain] = {"hash": loaded.file_hash, "sequence": sequence}
    return SpecPlan(new_partitions=new_partitions, runs=runs, skipped=skipped, cursor=next_cursor)


@dg.sensor(
    jobs=[synth_domain_job, synth_statistical_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def domain_spec_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SensorResult:
    """Watches ``schemas/`` for new or changed domain specs.

    Adds a ``domain`` partition for each new valid spec and requests one run of the whole graph per
    change of a spec file (``synth_statistical`` for timeseries and events specs): the run key is
    the domain, the number of the change and the file's hash,
    so the same file never triggers twice in a row, and a spec reverted to an earlier version still
    runs. Invalid specs and unsafe file names are skipped with the validation message in the log.
    It also registers the model pool at the instance's default limit, so that the first runs it
    (or a backfill) queues already wait for the pool.
    The cursor (JSON, domain -> {hash, sequence}) keeps ticks cheap and idempotent.
    """
    if ensure_pool_limit(context.instance):
        context.log.info(f"registered the {LLM_POOL!r} pool at the instance's default limit")
    cursor = json.loads(context.cursor) if context.cursor else {}
    existing = set(context.instance.get_dynamic_partitions(DOMAIN_PARTITIONS_NAME))
    plan = plan_spec_runs(warehouse.schemas_dir, existing, cursor)
    for path, reason in plan.skipped.items():
        context.log.warning(f"skipping {path}: {reason}")
    for run in plan.runs:
        context.log.info(
            f"requesting a run for {run.domain} (spec change {run.sequence}, sha256 {run.file_hash[:12]})"
        )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run.run_key,
                job_name=run.job_name,
                partition_key=run.domain,
                tags={
                    "synth/trigger": "domain_spec_sensor",
                    "synth/domain": run.domain,
                    "synth/spec_hash": run.file_hash[:16],
                },
            )
            for run in plan.runs
        ],
        dynamic_partitions_requests=(
            [dg.AddDynamicPartitionsRequest(DOMAIN_PARTITIONS_NAME, plan.new_partitions)]
            if plan.new_partitions
            else []
        ),
        cursor=json.dumps(plan.cursor, sort_keys=True),
    )
