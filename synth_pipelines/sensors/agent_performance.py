"""``agent_performance_sensor``: regenerate a domain, aimed at its weak cells, when agents fare worse."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from synth_pipelines.jobs import synth_domain_job
from synth_pipelines.learning.feedback import DomainState, decide
from synth_pipelines.learning.outcomes import ingest_inbox, rolling_success
from synth_pipelines.resources import WarehouseResource
from synth_pipelines.spec.loading import discover_specs, load_spec
from synth_pipelines.spec.model import FeedbackSpec, SpecError

TRIGGER_TAG = "synth/trigger"
DOMAIN_TAG = "synth/domain"
PARTITION_TAG = "dagster/partition"
# Every state in which a run may still write the domain's data.
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _feedback_specs(schemas_dir: str) -> dict[str, FeedbackSpec]:
    specs: dict[str, FeedbackSpec] = {}
    for domain, path in discover_specs(schemas_dir).items():
        try:
            specs[domain] = load_spec(path).spec.feedback
        except SpecError:
            continue  # domain_spec_sensor reports invalid specs
    return specs


def _in_flight(instance: dg.DagsterInstance, domains: list[str]) -> set[str]:
    """Domains with any unfinished run of the domain job: this sensor's, the spec sensor's, a
    backfill's or one launched by hand. A regeneration now would only race it."""
    busy = set()
    for domain in domains:
        runs = instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=synth_domain_job.name, tags={PARTITION_TAG: domain}, statuses=IN_FLIGHT
            ),
            limit=1,
        )
        if runs:
            busy.add(domain)
    return busy


@dg.sensor(job=synth_domain_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def agent_performance_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SensorResult:
    """Closes the loop between agents and data.

    Each tick: ingests outcome files dropped in ``<warehouse>/outcomes_inbox``; computes rolling
    success per domain (and per cell) over the spec's ``feedback.window_hours`` from
    ``agent_outcomes`` plus the latest ``compiled_program`` score; and when a domain falls below
    ``feedback.success_threshold`` requests exactly one regeneration run whose run config names the
    weak cells (``problem_matrix`` records them and raises their targets from then on). It holds
    while any run of the domain is in flight (whoever launched it),
    re-arms only after success recovers above ``feedback.recover_threshold`` (hysteresis), respects
    a cooldown, keeps its state in a JSON cursor, and logs every decision with its numbers.
    """
    wh = warehouse.get()
    specs = _feedback_specs(warehouse.schemas_dir)
    for name, report in ingest_inbox(wh, known_domains=set(specs)).items():
        context.log.info(f"ingested {name}: {report.summary()}")
    cursor = json.loads(context.cursor) if context.cursor else {}
    state = {d: DomainState.model_validate(s) for d, s in cursor.get("domains", {}).items()}
    now = datetime.now(UTC)
    windows = {domain: timedelta(hours=f.window_hours) for domain, f in specs.items()}
    rates = rolling_success(wh, windows=windows, now=now)
    decisions, next_state = decide(rates, specs, state, _in_flight(context.instance, list(specs)), now)
    run_requests = []
    for decision in decisions:
        context.log.info(decision.log_line())
        if decision.action != "regenerate":
            continue
        run_requests.append(
            dg.RunRequest(
                run_key=f"agent_performance:{decision.domain}:{decision.episode}",
                partition_key=decision.domain,
                run_config={"ops": {"problem_matrix": {"config": {"weak_cells": decision.weak_cells}}}},
                tags={
                    TRIGGER_TAG: "agent_performance_sensor",
                    DOMAIN_TAG: decision.domain,
                    "synth/episode": str(decision.episode),
                    "synth/success_rate": f"{decision.rate:.4f}" if decision.rate is not None else "n/a",
                },
            )
        )
    next_cursor = {"domains": {d: json.loads(s.model_dump_json()) for d, s in next_state.items()}}
    return dg.SensorResult(run_requests=run_requests, cursor=json.dumps(next_cursor, sort_keys=True))
