"""The ``dbt_quality`` code location: the dbt-duckdb project's models and tests as Dagster assets.

A code location of its own so that dbt (about half of the import time of the pipeline's location)
stays off the import path of every pipeline run. Lineage still crosses over: the dbt sources name
the pipeline's asset keys (``validated_examples``, ...), and the Dagster UI draws one asset graph
over both locations of ``workspace.yaml``.
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_dbt import DbtCliResource

from synth_pipelines.resources.settings import warehouse_resource

# dbt reads the same DuckDB file the assets write (dbt_quality/profiles.yml uses SYNTH_DUCKDB_PATH).
os.environ.setdefault("SYNTH_DUCKDB_PATH", str(warehouse_resource().get().duckdb_path))

from synth_pipelines.assets.dbt import DBT_EXECUTABLE, dbt_project, dbt_quality_models

defs = dg.Definitions(
    assets=[dbt_quality_models],
    resources={
        "dbt": DbtCliResource(project_dir=str(dbt_project.project_dir), dbt_executable=DBT_EXECUTABLE)
    },
)
