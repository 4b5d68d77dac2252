"""The pipeline's Dagster code location: assets, checks, jobs, sensors and resources, bound once here.

The dbt project is a second code location (``dbt_definitions``), so that no pipeline run imports dbt.
"""

from __future__ import annotations

import dagster as dg

from synth_pipelines.assets import PIPELINE_ASSETS
from synth_pipelines.assets.checks import QUALITY_CHECKS
from synth_pipelines.assets.generation_plan import generation_plan
from synth_pipelines.assets.spec_file import domain_review_calibration, domain_spec_file
from synth_pipelines.assets.statistical_data import STATISTICAL_CHECKS, statistical_data
from synth_pipelines.assets.training_exports import EXPORT_ASSETS
from synth_pipelines.jobs import (
    synth_domain_celery_job,
    synth_domain_job,
    synth_plan_job,
    synth_statistical_job,
)
from synth_pipelines.resources.settings import default_resources
from synth_pipelines.sensors import agent_performance_sensor, domain_spec_sensor, spec_observation_sensor

defs = dg.Definitions(
    assets=[
        domain_spec_file,
        domain_review_calibration,
        *PIPELINE_ASSETS,
        statistical_data,
        generation_plan,
        *EXPORT_ASSETS,
    ],
    asset_checks=[*QUALITY_CHECKS, *STATISTICAL_CHECKS],
    jobs=[
        synth_domain_job,
        synth_statistical_job,
        synth_plan_job,
        *([synth_domain_celery_job] if synth_domain_celery_job else []),
    ],
    sensors=[spec_observation_sensor, domain_spec_sensor, agent_performance_sensor],
    resources=default_resources(),
)


def resolved_synth_domain_job() -> dg.JobDefinition:
    """The ``synth_domain`` job bound to this code location's resources, for ``dg.reconstructable``
    and ``dg.execute_job`` (which need a module-level function that rebuilds the job in a subprocess)."""
    return defs.resolve_job_def("synth_domain")


def resolved_synth_domain_celery_job() -> dg.JobDefinition:
    """The ``synth_domain_celery`` job, for ``dg.reconstructable`` (the Celery executor needs a job
    its workers can rebuild from a module-level function)."""
    return defs.resolve_job_def("synth_domain_celery")
