"""Time-series and events domains: the statistical generators recover what they were asked for,
are deterministic by seed, write typed Parquet, and run as their own small graph."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from synth_pipelines.generation.simulate import generate_events, generate_timeseries
from synth_pipelines.spec.loading import load_spec
from synth_pipelines.spec.model import EventsSpec, TimeseriesSpec
from synth_pipelines.validation.recovery import check_events, check_timeseries, dominant_period

TEMPLATES = Path(__file__).resolve().parent.parent / "synth_pipelines" / "spec" / "templates"


def test_timeseries_recovers_the_configured_period_and_trend() -> None:
    spec = TimeseriesSpec(
        length=24 * 40, series=3, trend=0.04, noise=2.0, ar=0.3, anomalies=0.005,
        seasonality=[{"period": 24, "amplitude": 10}, {"period": 168, "amplitude": 3}],
    )  # fmt: skip
    table = generate_timeseries(spec)
    assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert table.num_rows == 3 * 24 * 40
    result = check_timeseries(table, spec)
    assert result["passed"], result
    for series in result["series"]:
        assert series["period"] == pytest.approx(24, rel=0.05)
        assert series["slope"] == pytest.approx(0.04, abs=0.01)
        assert series["seasonal_strength"] >= 0.5
    # Step spacing is the frequency.
    stamps = table.column("timestamp").to_pylist()[:3]
    assert (stamps[1] - stamps[0]).total_seconds() == 3600
    # The check can fail: the same data against a spec with another period and trend.
    wrong = spec.model_copy(
        update={"seasonality": [spec.seasonality[0].model_copy(update={"period": 60})], "trend": 0.5}
    )
    assert not check_timeseries(table, wrong)["passed"]


def test_anomalies_and_regime_changes_are_labelled() -> None:
    spec = TimeseriesSpec(
        length=500, series=2, noise=1.0, anomalies=0.02, regime_changes=2, regime_shift=30.0
    )
    table = generate_timeseries(spec)
    anomalies = np.asarray(table.column("is_anomaly").to_pylist())
    assert 0.005 < anomalies.mean() < 0.05
    regimes = table.column("regime").to_pylist()
    assert max(regimes) == 2 and regimes[0] == 0
    values = np.asarray(table.column("value").to_pylist())[:500]
    regime = np.asarray(regimes[:500])
    # Each regime change moves the level by about regime_shift.
    levels = [values[(regime == k) & ~anomalies[:500]].mean() for k in range(3)]
    assert all(abs(abs(b - a) - 30.0) < 3.0 for a, b in itertools.pairwise(levels))


def test_generation_is_deterministic_by_seed() -> None:
    spec = TimeseriesSpec(length=100, series=2, seasonality=[{"period": 10, "amplitude": 1}])
    assert generate_timeseries(spec).equals(generate_timeseries(spec))
    assert not generate_timeseries(spec).equals(generate_timeseries(spec.model_copy(update={"seed": 1})))
    events = EventsSpec(duration="2d", rate=5, attributes={"k": {"type": "category", "values": ["a", "b"]}})
    assert generate_events(events).equals(generate_events(events))


@pytest.mark.parametrize("process", ["poisson", "hawkes"])
def test_events_recover_the_configured_arrival_rate(process: str) -> None:
    spec = EventsSpec(
        duration="14d", process=process, rate=4.0, hawkes_alpha=0.5, hawkes_beta=2.0, streams=3,
        attributes={
            "method": {"type": "category", "values": ["card", "wallet"], "weights": [0.8, 0.2]},
            "amount": {"type": "float", "distribution": "lognormal", "mean": 3, "std": 0.5},
            "items": {"type": "integer", "distribution": "poisson", "mean": 2},
        },
    )  # fmt: skip
    table = generate_events(spec)
    assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert (
        table.schema.field("items").type == pa.int64() and table.schema.field("amount").type == pa.float64()
    )
    result = check_events(table, spec)
    assert result["passed"], result
    expected = 4.0 / (1 - 0.5) if process == "hawkes" else 4.0
    assert result["observed_rate_per_hour"] == pytest.approx(expected, rel=0.1)
    share = np.mean(np.asarray(table.column("method").to_pylist()) == "card")
    assert share == pytest.approx(0.8, abs=0.05)
    # The check can fail: the same events against a rate they do not have.
    assert not check_events(table, spec.model_copy(update={"rate": 8.0}))["passed"]


def test_hawkes_arrivals_cluster_more_than_poisson() -> None:
    def dispersion(process: str) -> float:
        spec = EventsSpec(duration="20d", process=process, rate=3.0, hawkes_alpha=0.6, hawkes_beta=1.0)
        hours = (
            np.asarray(generate_events(spec).column("timestamp").cast(pa.int64()).to_pylist())
            // 3_600_000_000
        )
        counts = np.bincount(hours - hours.min())
        return float(counts.var() / counts.mean())

    assert dispersion("poisson") == pytest.approx(1.0, abs=0.3)
    assert dispersion("hawkes") > 2.0


def test_dominant_period_finds_a_pure_cycle() -> None:
    steps = np.arange(1000)
    assert dominant_period(np.sin(2 * np.pi * steps / 50) + 0.01 * steps) == pytest.approx(50, rel=0.03)


def test_templates_parse() -> None:
    assert load_spec_text(TEMPLATES / "timeseries.yaml").timeseries is not None
    assert load_spec_text(TEMPLATES / "events.yaml").events is not None


def load_spec_text(path: Path) -> Any:
    import yaml

    from synth_pipelines.spec.loading import parse_spec

    return parse_spec(yaml.safe_load(path.read_text()), path=path)


def test_a_timeseries_domain_runs_its_own_graph_offline(
    tmp_path: Path, schemas_dir: Path, scripted_backends: Any
) -> None:
    """`make demo DOMAIN=service_traffic`: the spec, the data and the recovery check; no example
    assets. The sensor and the API launch the statistical job for it."""
    from synth_pipelines.jobs import job_name_for
    from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
    from synth_pipelines.runner import materialization_metadata, materialize_domain
    from synth_pipelines.sensors.domain_spec import plan_spec_runs
    from synth_pipelines.warehouse.storage import Warehouse

    warehouse = tmp_path / "warehouse"
    resources = {
        "warehouse": WarehouseResource(root=str(warehouse), schemas_dir=str(schemas_dir)),
        "llm": LLMResource(profile="local"),
        "embedder": EmbedderResource(),
    }
    result = materialize_domain(
        "service_traffic", instance=dg.DagsterInstance.ephemeral(), target_count=16, resources=resources
    )
    assert result.success
    meta = materialization_metadata(result)
    assert set(meta) == {"domain_schema", "statistical_data"}
    assert meta["statistical_data"]["quality"]["passed"] is True
    table = Warehouse(warehouse).read_partition("statistical_data", "service_traffic")
    assert table is not None and table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    spec = load_spec(schemas_dir / "service_traffic.yaml").spec
    assert table.num_rows == spec.timeseries.series * spec.timeseries.length  # type: ignore[union-attr]
    checks = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks == {"statistics_recovered": True}
    from synth_pipelines.warehouse.status import domain_status

    [status] = [r for r in domain_status(Warehouse(warehouse)) if r["domain"] == "service_traffic"]
    assert status["generated"] == status["accepted"] == table.num_rows and status["pass_rate"] == 1.0
    assert job_name_for("timeseries") == "synth_statistical" and job_name_for("api-example") == "synth_domain"
    runs = {r.domain: r.job_name for r in plan_spec_runs(schemas_dir, set(), {}).runs}
    assert runs["service_traffic"] == "synth_statistical" and runs["api_development"] == "synth_domain"


def test_a_statistical_domain_has_no_training_export(schemas_dir: Path, tmp_path: Path) -> None:
    from synth_pipelines.exports.training import export_rows
    from synth_pipelines.warehouse.storage import Warehouse

    spec = load_spec(schemas_dir / "payment_events.yaml").spec
    with pytest.raises(
        ValueError, match="no training examples to export; read its Parquet, statistical_data"
    ):
        export_rows(Warehouse(tmp_path / "wh"), spec, "sft")
