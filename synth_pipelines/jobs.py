"""Jobs: the whole per-domain graph as one partitioned job (what sensors, backfills and the CLI launch),
and the statistical domains' (timeseries, events) short graph."""

import dagster as dg

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


def job_name_for(spec_type: str) -> str:
    """The job that materializes a domain of this spec type."""
    return synth_statistical_job.name if spec_type in STATISTICAL_TYPES else synth_domain_job.name
