"""Resources configured from the environment, shared by the Definitions, ``make demo`` and the CLI."""

from __future__ import annotations

import os

import dagster as dg

from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """SYNTH_WAREHOUSE (default ./warehouse), SYNTH_SCHEMAS (./schemas), SYNTH_PROFILE (local) and the
    API key SYNTH_OPENAI_API_KEY, bound with ``dg.EnvVar`` so it is read at run time and never stored."""
    api_key = dg.EnvVar("SYNTH_OPENAI_API_KEY") if os.environ.get("SYNTH_OPENAI_API_KEY") else None
    return {
        "warehouse": WarehouseResource(
            root=os.environ.get("SYNTH_WAREHOUSE", "warehouse"),
            schemas_dir=os.environ.get("SYNTH_SCHEMAS", "schemas"),
        ),
        "llm": LLMResource(profile=os.environ.get("SYNTH_PROFILE", "local"), api_key=api_key),
        "embedder": EmbedderResource(),
    }
