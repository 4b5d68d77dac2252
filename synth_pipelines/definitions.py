"""The Dagster code location: assets, checks, jobs, sensors and resources, bound once here."""

from __future__ import annotations

import os

import dagster as dg
from dagster_dbt import DbtCliResource

from synth_pipelines.assets import PIPELINE_ASSETS
from synth_pipelines.assets.checks import QUALITY_CHECKS
from synth_pipelines.assets.exports import EXPORT_ASSETS
from synth_pipelines.jobs import synth_domain_job
from synth_pipelines.resources.settings import default_resources, warehouse_resource
from synth_pipelines.sensors import agent_performance_sensor, domain_spec_sensor

# dbt reads the same DuckDB file the assets write (dbt_quality/profiles.yml uses SYNTH_DUCKDB_PATH).
os.environ.setdefault("SYNTH_DUCKDB_PATH", str(warehouse_resource().get().duckdb_path))

from synth_pipelines.assets.dbt import DBT_EXECUTABLE, dbt_project, dbt_quality_models

defs = dg.Definitions(
    assets=[*PIPELINE_ASSETS, *EXPORT_ASSETS, dbt_quality_models],
    asset_checks=QUALITY_CHECKS,
    jobs=[synth_domain_job],
    sensors=[domain_spec_sensor, agent_performance_sensor],
    resources={
        **default_resources(),
        "dbt": DbtCliResource(project_dir=str(dbt_project.project_dir), dbt_executable=DBT_EXECUTABLE),
    },
)


def resolved_synth_domain_job() -> dg.JobDefinition:
    """The ``synth_domain`` job bound to this code location's resources, for ``dg.reconstructable``
    and ``dg.execute_job`` (which need a module-level function that rebuilds the job in a subprocess)."""
    return defs.resolve_job_def("synth_domain")
