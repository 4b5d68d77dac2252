"""``generation_plan``: the dry run of a domain, launchable from the UI (job ``synth_plan``)."""

import dagster as dg
from pydantic import Field

from synth_pipelines.assets._common import markdown_table
from synth_pipelines.assets.spec_file import domain_spec_file
from synth_pipelines.llm.config import ProfileError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.planning.forecast import plan_domain, render_plan, save_plan
from synth_pipelines.resources import LLMResource, WarehouseResource
from synth_pipelines.spec.loading import spec_path_for
from synth_pipelines.spec.model import SpecError
from synth_pipelines.validation.calibration import read_review_calibration, resolved_spec

GROUP = "planning"


class PlanConfig(dg.Config):
    target_count: int | None = Field(default=None, ge=1, description="Plan for this target count.")
    seed_count: int = Field(default=5, ge=1, le=200, description="Seeds generated when the spec lists none.")


@dg.asset(partitions_def=domain_partitions, group_name=GROUP, deps=[domain_spec_file], kinds={"json"})
def generation_plan(
    context: dg.AssetExecutionContext, config: PlanConfig, warehouse: WarehouseResource, llm: LLMResource
) -> dg.MaterializeResult:
    """The forecast of the next run of the domain (grain: one plan per domain), made without calling
    any model: per asset the units, what the cache already answers, model calls, tokens, dollars
    and wall time (see ``synth plan``). It reads the spec YAML, the warehouse's history
    (``llm_usage``) and the response cache, and is saved to the state folder so that the run that
    follows records planned vs actual (``planned_model_calls``, ``plan_calls_error_pct``) on each
    model-calling asset. Nothing downstream depends on it: materializing it is a dry run."""
    domain = context.partition_key
    wh = warehouse.get()
    try:
        review = read_review_calibration(wh, domain)
        resolved = resolved_spec(spec_path_for(warehouse.schemas_dir, domain), llm.load_profile(), review)
        plan = plan_domain(
            resolved,
            wh,
            llm.client(wh.cache_path),
            target_count=config.target_count,
            seed_count=config.seed_count,
        )
    except (SpecError, FileNotFoundError, ProfileError, ValueError) as e:
        raise dg.Failure(description=f"planning {domain!r}: {e}") from e
    save_plan(wh, plan)
    context.log.info(render_plan(plan))
    return dg.MaterializeResult(
        metadata={
            "planned_model_calls": plan.calls,
            "planned_tokens": plan.tokens,
            "planned_cost_usd": dg.MetadataValue.float(round(plan.cost_usd, 6)),
            "planned_wall_s": dg.MetadataValue.float(round(plan.wall_s, 1)),
            "target_count": plan.target_count,
            "profile": plan.profile,
            "plan": markdown_table(
                [a.model_dump() for a in plan.assets],
                [
                    "asset",
                    "units",
                    "cached_units",
                    "calls",
                    "prompt_tokens",
                    "completion_tokens",
                    "cost_usd",
                    "wall_s",
                ],
                limit=20,
            ),
            "basis": dg.MetadataValue.json({a.asset: a.basis for a in plan.assets}),
            "notes": dg.MetadataValue.json(plan.notes),
        }
    )
