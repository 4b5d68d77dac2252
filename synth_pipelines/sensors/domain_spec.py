"""``domain_spec_sensor``: new or changed files in ``schemas/`` become partitions and runs."""

import json
from pathlib import Path

import dagster as dg
from pydantic import BaseModel

from synth_pipelines.jobs import synth_domain_job
from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME
from synth_pipelines.resources import WarehouseResource
from synth_pipelines.spec.model import SpecError, discover_specs, load_spec
from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name


class SpecPlan(BaseModel):
    """What one sensor tick decided: partitions to add, runs to request, files skipped (and why)."""

    new_partitions: list[str]
    runs: list[tuple[str, str]]  # (domain, file hash)
    skipped: dict[str, str]
    cursor: dict[str, str]


def plan_spec_runs(
    schemas_dir: str | Path, existing_partitions: set[str], cursor: dict[str, str]
) -> SpecPlan:
    """Pure decision logic: which valid specs are new or changed since the cursor (domain -> file hash)."""
    new_partitions: list[str] = []
    runs: list[tuple[str, str]] = []
    skipped: dict[str, str] = {}
    next_cursor = dict(cursor)
    for domain, path in discover_specs(schemas_dir).items():
        try:
            validate_domain_name(domain, source=str(path))
            loaded = load_spec(path)
        except (UnsafeDomainError, SpecError) as e:
            skipped[str(path)] = str(e)
            continue
        if domain not in existing_partitions:
            new_partitions.append(domain)
        if cursor.get(domain) != loaded.file_hash:
            runs.append((domain, loaded.file_hash))
            next_cursor[domain] = loaded.file_hash
    return SpecPlan(new_partitions=new_partitions, runs=runs, skipped=skipped, cursor=next_cursor)


@dg.sensor(job=synth_domain_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED)
def domain_spec_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SensorResult:
    """Watches ``schemas/`` for new or changed domain specs.

    Adds a ``domain`` partition for each new valid spec and requests one run of the whole graph per
    (domain, file hash) — the run key — so the same file never triggers twice. Invalid specs and
    unsafe file names are skipped with the validation message in the log. The cursor (JSON,
    domain -> file hash) keeps ticks cheap and idempotent.
    """
    cursor = json.loads(context.cursor) if context.cursor else {}
    existing = set(context.instance.get_dynamic_partitions(DOMAIN_PARTITIONS_NAME))
    plan = plan_spec_runs(warehouse.schemas_dir, existing, cursor)
    for path, reason in plan.skipped.items():
        context.log.warning(f"skipping {path}: {reason}")
    for domain, file_hash in plan.runs:
        context.log.info(f"requesting a run for {domain} (spec sha256 {file_hash[:12]})")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{domain}:{file_hash}",
                partition_key=domain,
                tags={
                    "synth/trigger": "domain_spec_sensor",
                    "synth/domain": domain,
                    "synth/spec_hash": file_hash[:16],
                },
            )
            for domain, file_hash in plan.runs
        ],
        dynamic_partitions_requests=(
            [dg.AddDynamicPartitionsRequest(DOMAIN_PARTITIONS_NAME, plan.new_partitions)]
            if plan.new_partitions
            else []
        ),
        cursor=json.dumps(plan.cursor, sort_keys=True),
    )
