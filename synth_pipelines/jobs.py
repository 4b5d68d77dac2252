"""Jobs: the whole per-domain graph as one partitioned job (what sensors, backfills and the CLI launch),
and the statistical domains' (timeseries, events) short graph."""

import os

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from synth_pipelines.assets import PIPELINE_ASSETS
from synth_pipelines.assets.generation_plan import generation_plan
from synth_pipelines.assets.statistical_data import STATISTICAL_ASSETS
from synth_pipelines.spec.model import STATISTICAL_TYPES

synth_domain_job = dg.define_asset_job(
    name="synth_domain",
    selection=dg.AssetSelection.assets(*PIPELINE_ASSETS),
    # In-process on purpose: the assets form a chain, so step subprocesses would only add an import
    # of the code location per step. Concurrency comes from async calls inside the model-calling
    # assets, and across domains from concurrent runs, which the instance queues by the `llm` pool
    # (run granularity: a waiting run waits in the daemon's queue, not in a spinning process).
    executor_def=dg.in_process_executor,
    description="Materialize the whole graph, schema to compiled program, for one domain partition.",
)


synth_statistical_job = dg.define_asset_job(
    name="synth_statistical",
    selection=dg.AssetSelection.assets(*STATISTICAL_ASSETS),
    executor_def=dg.in_process_executor,
    description="Materialize a timeseries or events domain: its spec and its statistical data.",
)


synth_plan_job = dg.define_asset_job(
    name="synth_plan",
    selection=dg.AssetSelection.assets(generation_plan),
    executor_def=dg.in_process_executor,
    description="Dry run: forecast a domain's next run (calls, tokens, dollars, time) without calling a "
    "model. Config ops.generation_plan.config.target_count plans for another count.",
)


CELERY_BROKER_ENV = "SYNTH_CELERY_BROKER"
DEFAULT_CELERY_BROKER = "redis://127.0.0.1:6379/0"
CELERY_TICK_SECONDS = 0.1


def celery_broker_url() -> str:
    """The broker (and result backend) the Celery job and its workers share: SYNTH_CELERY_BROKER,
    read when the code location loads, like SYNTH_PROFILE."""
    return os.environ.get(CELERY_BROKER_ENV) or DEFAULT_CELERY_BROKER


def _celery_domain_job() -> UnresolvedAssetJobDefinition | None:
    try:
        from dagster_celery import celery_executor, core_execution_loop
    except ImportError:  # the `distributed` extra is not installed: the job is not offered
        return None
    # dagster-celery checks its running tasks and submits the next steps once per TICK_SECONDS (1 s):
    # every step on the critical path waited up to a second for it, about 10 s of a 4-shard domain's
    # minute on 2 workers (docs/benchmarks.md#celery-workers). A tick costs one result-backend read
    # per running step, so a tenth of a second is cheap. The constant is read at each tick.
    if getattr(core_execution_loop, "TICK_SECONDS", None) == 1:
        core_execution_loop.TICK_SECONDS = CELERY_TICK_SECONDS  # type: ignore[assignment]  # time.sleep takes a float
    broker = celery_broker_url()
    return dg.define_asset_job(
        name="synth_domain_celery",
        selection=dg.AssetSelection.assets(*PIPELINE_ASSETS),
        # Each step is a Celery task that any worker on the broker picks up (`celery -A
        # synth_pipelines.celery_worker worker`); the run itself only submits steps and waits.
        # Runs of several domains (a backfill) therefore spread their steps over every worker.
        # Workers need this code, the same warehouse (object storage across machines) and, for
        # one quota, SYNTH_SHARED_STATE.
        executor_def=celery_executor.configured({"broker": broker, "backend": broker}, name="synth_celery"),
        description="The synth_domain graph with every step a Celery task (SYNTH_CELERY_BROKER, default "
        f"{DEFAULT_CELERY_BROKER}); start workers with `celery -A synth_pipelines.celery_worker worker`, "
        "see docs/scaling-out.md.",
    )


synth_domain_celery_job = _celery_domain_job()


def job_name_for(spec_type: str) -> str:
    """The job that materializes a domain of this spec type."""
    return synth_statistical_job.name if spec_type in STATISTICAL_TYPES else synth_domain_job.name
