"""Materialize part of the asset graph for one domain, in-process, the way the tests need it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import run_config_for

DOMAIN = "api_development"


def up_to(name: str) -> list[Any]:
    """The pipeline's assets in dependency order, through ``name`` (by name, so that adding an
    asset does not shift what a test materializes)."""
    from synth_pipelines.assets import PIPELINE_ASSETS, PIPELINE_STEPS

    return list(PIPELINE_ASSETS[: PIPELINE_STEPS.index(name) + 1])


def asset(name: str) -> Any:
    from synth_pipelines.assets import PIPELINE_ASSETS, PIPELINE_STEPS

    return PIPELINE_ASSETS[PIPELINE_STEPS.index(name)]


def materialize_domain(
    assets: Sequence[Any],
    warehouse: Path | str,
    schemas: Path | str,
    *,
    llm: LLMResource | str = "local",
    target: int | None = None,
    domain: str = DOMAIN,
    op_config: dict[str, dict[str, Any]] | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInJobResult:
    """Run ``assets`` for ``domain`` on a fresh ephemeral instance. ``llm`` is a resource or a
    profile (name or path); ``target`` sets the matrix's target count."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DOMAIN_PARTITIONS_NAME, [domain])
    return dg.materialize(
        assets,
        partition_key=domain,
        instance=instance,
        resources={
            "warehouse": WarehouseResource(root=str(warehouse), schemas_dir=str(schemas)),
            "llm": llm if isinstance(llm, LLMResource) else LLMResource(profile=str(llm)),
            "embedder": EmbedderResource(),
        },
        run_config=run_config_for(target, op_config=op_config),
        raise_on_error=raise_on_error,
    )


def failure_message(result: dg.ExecuteInJobResult) -> str:
    """The first failed step's description (what a user sees), else its error."""
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            return (data.user_failure_data.description if data.user_failure_data else "") or str(data.error)
    raise AssertionError("no step failed")
