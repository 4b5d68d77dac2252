"""``statistical_data`` and its check: the time-series and events domains (spec types ``timeseries``
and ``events``), made by statistical generators instead of example generation and judging."""

import json
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field

from synth_pipelines.assets._common import load_materialized_spec, markdown_table, usage_metadata
from synth_pipelines.assets.domain_schema import domain_schema
from synth_pipelines.assets.spec_file import domain_spec_file
from synth_pipelines.generation.simulate import generate_events, generate_timeseries
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.types import ChatMessage, ProviderError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import LLMResource, WarehouseResource
from synth_pipelines.spec.example_schema import json_schema_for_model
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.validation.recovery import check_events, check_timeseries
from synth_pipelines.warehouse.storage import QUALITY_FILE, SCENARIO_FILE

GROUP = "statistical"


class Scenario(BaseModel):
    name: str = Field(min_length=3, max_length=60)
    description: str = Field(min_length=10, max_length=300)


def _parameters(spec: DomainSpec) -> dict[str, Any]:
    section = spec.timeseries if spec.type == "timeseries" else spec.events
    return section.model_dump(mode="json") if section is not None else {}


def describe_scenario(
    spec: DomainSpec, llm: LLMResource, cache_path: Any
) -> tuple[Scenario | None, str | None, dict[str, Any]]:
    """A name and a one-paragraph description of the generated scenario by the generator model
    (cached), and the call's usage metadata. Only words: the numbers come from the statistical
    generator. A failure is reported, never fatal."""
    client = None
    try:
        client = llm.client(cache_path)
        result = client.structured(
            client.generator_chain(),
            [
                ChatMessage(
                    role="system", content="You name and describe synthetic datasets. Reply with JSON only."
                ),
                ChatMessage(
                    role="user",
                    content=f"Dataset: {spec.description}\nGenerator settings: "
                    f"{json.dumps(_parameters(spec))[:1200]}\nGive it a short name and a description.",
                ),
            ],
            Scenario,
            json_schema=json_schema_for_model(Scenario),
            temperature=0.3,
            max_tokens=160,
            seed=0,
        )
    except (ProviderError, ProviderConfigError, ValueError) as e:
        return None, str(e)[:300], usage_metadata(client.totals) if client else {}
    usage = usage_metadata(client.totals)
    if result.value is None:
        return None, result.error, usage
    return result.value, None, usage


@dg.asset(
    partitions_def=domain_partitions,
    group_name=GROUP,
    deps=[domain_schema, domain_spec_file],
    kinds={"parquet", "numpy"},
)
def statistical_data(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, llm: LLMResource
) -> dg.MaterializeResult:
    """The data of a ``timeseries`` domain (grain: one row per series and step: ``series_id``,
    ``step``, ``timestamp``, ``value``, ``regime``, ``is_anomaly``) or an ``events`` domain (grain:
    one row per event: ``stream_id``, ``event_id``, ``timestamp`` and the spec's typed attributes),
    generated with numpy from the spec's parameters, deterministic by its ``seed``. Timestamps are
    Arrow timestamps (UTC). The generator model only names and describes the scenario
    (``scenario.json``). The ``statistics_recovered`` check tests that the configured period and
    trend (or arrival rate) can be recovered from the data."""
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    if spec.type == "timeseries" and spec.timeseries is not None:
        table = generate_timeseries(spec.timeseries)
        quality = check_timeseries(table, spec.timeseries)
    elif spec.type == "events" and spec.events is not None:
        table = generate_events(spec.events)
        quality = check_events(table, spec.events)
    else:
        raise dg.Failure(
            description=f"{domain!r} is a {spec.type!r} domain: statistical_data makes timeseries and events "
            "domains only (run the synth_domain job for it)"
        )
    path = wh.write_partition("statistical_data", domain, table)
    wh.write_json(QUALITY_FILE.format(domain=domain), quality)
    scenario, scenario_error, usage = describe_scenario(spec, llm, wh.cache_path)
    wh.write_json(
        SCENARIO_FILE.format(domain=domain),
        {
            "scenario": scenario.model_dump() if scenario else None,
            "error": scenario_error,
            "parameters": _parameters(spec),
        },
    )
    return dg.MaterializeResult(
        metadata={
            "rows": table.num_rows,
            "type": spec.type,
            "columns": dg.MetadataValue.json({f.name: str(f.type) for f in table.schema}),
            "scenario_name": scenario.name if scenario else "(not named: " + (scenario_error or "") + ")",
            "scenario_description": scenario.description if scenario else "",
            "quality": dg.MetadataValue.json(quality),
            "path": dg.MetadataValue.path(str(path)),
            "preview": markdown_table(table.slice(0, 5).to_pylist(), table.column_names, limit=5, width=40),
            **usage,
        }
    )


@dg.asset_check(asset=statistical_data, blocking=True, partitions_def=domain_partitions)
def statistics_recovered(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """What the spec asked for can be recovered from the data: for series, the main seasonal period
    (periodogram, within 5%), its STL seasonal strength (>= 0.5) and the trend slope (within 4
    standard errors + 5%, when there are no regime changes); for events, the arrival rate (within 4
    standard deviations of the expected long-run rate)."""
    domain = context.partition_key
    wh = warehouse.get()
    quality = wh.read_json(QUALITY_FILE.format(domain=domain)) or {}
    return dg.AssetCheckResult(
        passed=bool(quality.get("passed")),
        metadata={"detail": dg.MetadataValue.json(quality)},
    )


STATISTICAL_ASSETS = [domain_schema, statistical_data]
STATISTICAL_CHECKS = [statistics_recovered]
