"""Resources configured from the environment, shared by the Definitions, ``make demo`` and the CLI."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.resources.step_outputs import StepOutputsIOManager
from synth_pipelines.warehouse.storage import location_from_env


def warehouse_resource(root: str | None = None, schemas_dir: str | None = None) -> WarehouseResource:
    """Root and state folder from :func:`location_from_env`, specs from SYNTH_SCHEMAS (./schemas).
    Explicit arguments win over the environment."""
    resolved_root, state_dir = location_from_env(root)
    return WarehouseResource(
        root=resolved_root,
        state_dir=state_dir,
        schemas_dir=schemas_dir or os.environ.get("SYNTH_SCHEMAS", "schemas"),
    )


def default_resources() -> dict[str, Any]:
    """The warehouse from :func:`warehouse_resource`, SYNTH_PROFILE (local) and the API key
    SYNTH_OPENAI_API_KEY, bound with ``dg.EnvVar`` so it is read at run time and never stored; the
    steps' values in the warehouse's state folder (:class:`StepOutputsIOManager`)."""
    api_key = dg.EnvVar("SYNTH_OPENAI_API_KEY") if os.environ.get("SYNTH_OPENAI_API_KEY") else None
    warehouse = warehouse_resource()
    return {
        "warehouse": warehouse,
        "io_manager": StepOutputsIOManager(warehouse=warehouse),
        "llm": LLMResource(profile=os.environ.get("SYNTH_PROFILE", "local"), api_key=api_key),
        "embedder": EmbedderResource(),
    }
