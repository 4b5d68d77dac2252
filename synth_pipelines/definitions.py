"""The Dagster code location: assets, job, sensors and resources, bound once here."""

from __future__ import annotations

import os

import dagster as dg

from synth_pipelines.assets import PIPELINE_ASSETS
from synth_pipelines.assets.checks import QUALITY_CHECKS
from synth_pipelines.assets.exports import EXPORT_ASSETS
from synth_pipelines.jobs import synth_domain_job
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.sensors import agent_performance_sensor, domain_spec_sensor


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the environment: SYNTH_WAREHOUSE, SYNTH_SCHEMAS, SYNTH_PROFILE, SYNTH_OPENAI_API_KEY."""
    api_key = dg.EnvVar("SYNTH_OPENAI_API_KEY") if os.environ.get("SYNTH_OPENAI_API_KEY") else None
    return {
        "warehouse": WarehouseResource(
            root=os.environ.get("SYNTH_WAREHOUSE", "warehouse"),
            schemas_dir=os.environ.get("SYNTH_SCHEMAS", "schemas"),
        ),
        "llm": LLMResource(profile=os.environ.get("SYNTH_PROFILE", "local"), api_key=api_key),
        "embedder": EmbedderResource(),
    }


defs = dg.Definitions(
    assets=[*PIPELINE_ASSETS, *EXPORT_ASSETS],
    asset_checks=QUALITY_CHECKS,
    jobs=[synth_domain_job],
    sensors=[domain_spec_sensor, agent_performance_sensor],
    resources=default_resources(),
)
