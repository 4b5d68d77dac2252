"""The pipeline as a service: semantic search (exact and ANN), the REST API and the MCP tools.

The API test runs the real thing: uvicorn on 127.0.0.1, a run launched through a Dagster instance
(the run launcher starts it in its own process) against the fake OpenAI server, polled to success,
then searched, fed outcomes and exported. The MCP test drives the same service through the SDK's
in-process client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from synth_pipelines.service.operations import ServiceSettings, SynthService
from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from synth_pipelines.warehouse.ann import AnnIndex, recall_at_k, vectors_of
from synth_pipelines.warehouse.search import exact_neighbours
from synth_pipelines.warehouse.tables import EMBEDDING_DIM
from tests.materialize import asset, up_to
from tests.test_openai_compat import profile_file

DOMAIN = "api_development"
TOKEN = "test-token-123"


def clustered_vectors(n: int, seed: int = 1) -> np.ndarray:
    """Unit vectors around 400 centres: the shape of real sentence embeddings (topics), unlike
    uniform random points, where no index (and no notion of a neighbour) works."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(400, EMBEDDING_DIM))
    v = centres[rng.integers(0, 400, n)] + 0.6 * rng.normal(size=(n, EMBEDDING_DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def embeddings_table(vectors: np.ndarray) -> pa.Table:
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return pa.table(
        {
            "example_id": [f"e{i:06d}" for i in range(len(vectors))],
            "embedding": pa.FixedSizeListArray.from_arrays(flat, EMBEDDING_DIM),
        }
    )


def test_exact_search_ranks_by_cosine_and_finds_each_vector_first() -> None:
    vectors = clustered_vectors(500)
    table = embeddings_table(vectors)
    hits = exact_neighbours(table, vectors[[7, 123]], 5)
    assert [h[0][0] for h in hits] == ["e000007", "e000123"]
    assert hits[0][0][1] == pytest.approx(1.0, abs=1e-5)
    brute = vectors @ vectors[7]
    expected = [f"e{i:06d}" for i in np.argsort(-brute)[:5]]
    assert [h[0] for h in hits[0]] == expected
    assert [h[1] for h in hits[0]] == sorted((h[1] for h in hits[0]), reverse=True)


def test_ann_recall_at_10_on_20k_vectors() -> None:
    vectors = clustered_vectors(20_000)
    table = embeddings_table(vectors)
    ann = AnnIndex.build(vectors_of(table), table.column("example_id").to_pylist())
    queries = vectors[np.random.default_rng(2).choice(len(vectors), 100, replace=False)]
    recall = recall_at_k(ann, exact_neighbours(table, queries, 10), queries, 10)
    assert recall >= 0.95
    assert ann.search(queries[:1], 1)[0][0][0] == exact_neighbours(table, queries[:1], 1)[0][0][0]


def test_example_index_asset_builds_only_past_min_rows_and_search_uses_it(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends: Any
) -> None:
    from synth_pipelines.warehouse.ann import index_info, index_path
    from tests.materialize import materialize_domain

    wh_root = tmp_path / "wh"
    upstream = [*up_to("example_embeddings"), asset("example_index")]  # through example_index, no program
    small = materialize_domain(
        upstream,
        wh_root,
        scripted_schemas_dir,
        target=12,
        op_config={"example_index": {"min_rows": 10_000}},
    )
    meta = small.asset_materializations_for_node("example_index")[0].metadata
    assert meta["method"].value == "exact"
    settings = ServiceSettings(
        warehouse_root=str(wh_root), state_dir=None, schemas_dir=str(scripted_schemas_dir), profile="local"
    )
    service = SynthService(settings)
    assert not index_path(service.warehouse, DOMAIN).exists()
    validated = service.warehouse.read_partition("validated_examples", DOMAIN)
    assert validated is not None and validated.num_rows >= 3
    # The example itself is its own top hit.
    from synth_pipelines.spec.text import example_text

    first = json.loads(validated.column("example_json")[0].as_py())
    result = service.search(DOMAIN, example_text(first), k=3)
    assert result.method == "exact"
    assert result.hits[0].example_id == validated.column("example_id")[0].as_py()
    assert result.hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert result.hits[0].provenance["generator_model"]
    assert result.hits[0].example == first

    built = materialize_domain(
        upstream, wh_root, scripted_schemas_dir, target=12,
        op_config={"example_index": {"min_rows": 1}},
    )  # fmt: skip
    meta = built.asset_materializations_for_node("example_index")[0].metadata
    assert meta["method"].value == "ann" and meta["recall_at_10"].value == 1.0
    info = index_info(index_path(service.warehouse, DOMAIN))
    assert info is not None and info.rows == validated.num_rows
    ann_result = service.search(DOMAIN, example_text(first), k=3)
    assert ann_result.method == "ann"
    assert ann_result.hits[0].example_id == result.hits[0].example_id

    # The CLI is the same call.
    from typer.testing import CliRunner

    from synth_pipelines.cli import app

    out = CliRunner().invoke(
        app,
        ["search", example_text(first), "--domain", DOMAIN, "--k", "2", "--json", "--exact",
         "--warehouse", str(wh_root), "--schemas", str(scripted_schemas_dir)],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    printed = json.loads(out.output)
    assert printed["method"] == "exact" and printed["hits"][0]["example_id"] == result.hits[0].example_id
    missing = CliRunner().invoke(
        app, ["search", "x", "--domain", "data_analysis", "--warehouse", str(wh_root),
              "--schemas", str(scripted_schemas_dir)],
    )  # fmt: skip
    assert missing.exit_code == 1 and "no example_embeddings yet" in missing.output


def test_search_errors_name_the_problem(tmp_path: Path, schemas_dir: Path) -> None:
    from synth_pipelines.service.operations import NotFound, ServiceError

    settings = ServiceSettings(
        warehouse_root=str(tmp_path / "wh"), state_dir=None, schemas_dir=str(schemas_dir), profile="local"
    )
    service = SynthService(settings)
    with pytest.raises(NotFound, match="no example_embeddings yet"):
        service.search(DOMAIN, "list users")
    with pytest.raises(NotFound, match="no spec"):
        service.search("no_such_domain", "x")
    with pytest.raises(ServiceError, match="unsafe domain name"):
        service.search("../etc", "x")


# ------------------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """uvicorn serving the API on 127.0.0.1 with a bearer token, a Dagster home with the default
    run launcher, the scripted specs and a profile on the fake OpenAI server."""
    import shutil

    from synth_pipelines.service.api import create_app
    from tests.conftest import SCHEMAS, plumbing_specs, served

    tmp = tmp_path_factory.mktemp("api")
    monkeypatch = pytest.MonkeyPatch()
    schemas = tmp / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    plumbing_specs(schemas)  # the fake server's replies are random words: the scripted_schemas_dir settings
    home = tmp / "dagster_home"
    home.mkdir()
    # Dagster's default coordinator queues runs for the daemon (`dagster dev` runs one); here the
    # run launcher starts each run at once, so no daemon is needed.
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    server = FakeOpenAIServer(FaultPlan(latency_s=0.005))
    server.__enter__()
    env = {
        "DAGSTER_HOME": str(home),
        "SYNTH_WAREHOUSE": str(tmp / "warehouse"),
        "SYNTH_SCHEMAS": str(schemas),
        "SYNTH_PROFILE": str(profile_file(tmp, server.base_url)),
        "SYNTH_OPENAI_API_KEY": "sk-test",
        "SYNTH_API_TOKEN": TOKEN,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SYNTH_STATE_DIR", raising=False)
    monkeypatch.delenv("SYNTH_DAGSTER_URL", raising=False)
    import dagster as dg

    instance = dg.DagsterInstance.get()
    service = SynthService(instance=instance)
    try:
        with served(create_app(service, host="127.0.0.1")) as url:
            yield {"url": url, "service": service, "server": server, "tmp": tmp}
    finally:
        server.__exit__(None, None, None)
        instance.dispose()
        monkeypatch.undo()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def poll(client: httpx.Client, run_id: str, timeout_s: float = 400) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.get(f"/v1/runs/{run_id}", headers=auth()).json()
        if info["done"]:
            return info
        time.sleep(1.0)
    raise AssertionError(f"run {run_id} not done after {timeout_s}s: {info}")


@pytest.mark.e2e
def test_api_launches_polls_searches_records_and_exports(live_api: dict[str, Any]) -> None:
    with httpx.Client(base_url=live_api["url"], timeout=120) as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/v1/domains").status_code == 401  # token required once one is set
        domains = client.get("/v1/domains", headers=auth()).json()
        assert {d["domain"] for d in domains} >= {DOMAIN, "data_analysis"}

        # The forecast first (no model call); the run then reports planned vs actual.
        forecast = client.get(f"/v1/domains/{DOMAIN}/plan", params={"target_count": 8}, headers=auth())
        assert forecast.status_code == 200, forecast.text
        planned = {a["asset"]: a for a in forecast.json()["assets"]}
        assert planned["raw_generations"]["units"] == 8 and forecast.json()["totals"]["calls"] > 0
        launched = client.post(f"/v1/domains/{DOMAIN}/runs", json={"target_count": 8}, headers=auth())
        assert launched.status_code == 202, launched.text
        run_id = launched.json()["run_id"]
        # A second launch while the first is in flight is refused, naming the run.
        again = client.post(f"/v1/domains/{DOMAIN}/runs", json={}, headers=auth())
        if again.status_code == 409:
            assert run_id in again.json()["error"]["message"]
        else:  # the first already finished (fast machine): then it is a new run
            assert again.status_code == 202
            poll(client, again.json()["run_id"])
        info = poll(client, run_id)
        assert info["success"] is True, info
        assert info["domain"] == DOMAIN
        # The run is in the Dagster instance (the UI reads the same storage).
        assert live_api["service"].instance.get_run_by_id(run_id) is not None

        detail = client.get(f"/v1/domains/{DOMAIN}", headers=auth()).json()
        assert detail["accepted"] > 0
        assert detail["metrics"]["validated_examples"]["rows"] == detail["accepted"]
        assert {c["check"] for c in detail["checks"]} >= {"schema_compliance", "consensus_pass_rate"}
        raw_metrics = detail["metrics"]["raw_generations"]
        assert raw_metrics["planned_model_calls"] == planned["raw_generations"]["calls"], sorted(raw_metrics)
        assert all(c["passed"] is not None for c in detail["checks"])

        # Search: an accepted example finds itself first.
        validated = live_api["service"].warehouse.read_partition("validated_examples", DOMAIN)
        from synth_pipelines.spec.text import example_text

        example = json.loads(validated.column("example_json")[0].as_py())
        found = client.get(
            "/v1/search", params={"domain": DOMAIN, "q": example_text(example), "k": 3}, headers=auth()
        ).json()
        assert found["hits"][0]["example_id"] == validated.column("example_id")[0].as_py()
        assert found["hits"][0]["provenance"]["cell_id"]

        cell = validated.column("cell_id")[0].as_py()
        outcomes = [
            {"outcome_id": f"o{i}", "domain": DOMAIN, "cell_id": cell, "success": i % 2 == 0,
             "recorded_at": "2026-11-30T00:00:00Z", "agent": "api-test"}
            for i in range(4)
        ]  # fmt: skip
        posted = client.post("/v1/outcomes", json={"outcomes": outcomes}, headers=auth())
        assert posted.status_code == 200, posted.text
        assert posted.json()["accepted"] == 4

        with client.stream(
            "GET", f"/v1/domains/{DOMAIN}/export", params={"format": "sft"}, headers=auth()
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert len(lines) == detail["accepted"]
        assert all("messages" in row or "prompt" in row for row in lines)

        verdicts = client.post(
            "/v1/validate",
            json={"domain": DOMAIN, "rows": [example, {"method": "FETCH"}], "models": False},
            headers=auth(),
        ).json()
        assert [r["passed"] for r in verdicts["rows"]] == [True, False]
        assert verdicts["rows"][1]["stage"] == "rules"


def test_api_bad_input_gets_the_documented_4xx(live_api: dict[str, Any]) -> None:
    with httpx.Client(base_url=live_api["url"], timeout=30) as client:
        wrong = client.get("/v1/domains", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["field"] == "authorization"
        unknown = client.get("/v1/domains/no_such_domain", headers=auth())
        assert unknown.status_code == 404 and "no_such_domain" in unknown.json()["error"]["message"]
        unsafe = client.post("/v1/domains/..%2Fetc/runs", json={}, headers=auth())
        assert unsafe.status_code in (400, 404)
        bad_count = client.post(f"/v1/domains/{DOMAIN}/runs", json={"target_count": -3}, headers=auth())
        assert bad_count.status_code == 422 and bad_count.json()["error"]["field"] == "target_count"
        bad_rows = client.post("/v1/validate", json={"domain": DOMAIN, "rows": "x"}, headers=auth())
        assert bad_rows.status_code == 422 and bad_rows.json()["error"]["field"] == "rows"
        too_many = client.post(
            "/v1/validate", json={"domain": DOMAIN, "rows": [{}] * 1001, "models": False}, headers=auth()
        )
        assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "rows"
        huge = client.post(
            "/v1/validate",
            content=b'{"domain": "api_development", "rows": ['
            + b'{"a": "'
            + b"x" * (9 * 1024 * 1024)
            + b'"}]}',
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert huge.status_code == 413 and huge.json()["error"]["field"] == "body"
        bad_k = client.get("/v1/search", params={"domain": DOMAIN, "q": "x", "k": 0}, headers=auth())
        assert bad_k.status_code == 422 and bad_k.json()["error"]["field"] == "k"
        bad_format = client.get(f"/v1/domains/{DOMAIN}/export", params={"format": "csv"}, headers=auth())
        assert bad_format.status_code == 422 and bad_format.json()["error"]["field"] == "format"
        bad_outcome = client.post(
            "/v1/outcomes", json={"outcomes": [{"outcome_id": "x", "domain": DOMAIN}]}, headers=auth()
        )
        assert bad_outcome.status_code == 422 and bad_outcome.json()["error"]["field"] == "outcomes.0"
        bad_plan = client.get(f"/v1/domains/{DOMAIN}/plan", params={"target_count": 0}, headers=auth())
        assert bad_plan.status_code == 422 and bad_plan.json()["error"]["field"] == "target_count"
        unknown_plan = client.get("/v1/domains/no_such_domain/plan", headers=auth())
        assert unknown_plan.status_code == 404
        missing_run = client.get("/v1/runs/does-not-exist", headers=auth())
        assert missing_run.status_code == 404


def test_api_refuses_a_public_bind_without_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from synth_pipelines.service.api import create_app
    from synth_pipelines.service.operations import ServiceError

    monkeypatch.delenv("SYNTH_API_TOKEN", raising=False)
    settings = ServiceSettings(
        warehouse_root=str(tmp_path), state_dir=None, schemas_dir="schemas", profile="local"
    )
    with pytest.raises(ServiceError, match="SYNTH_API_TOKEN"):
        create_app(SynthService(settings), host="0.0.0.0")
    create_app(SynthService(settings), host="127.0.0.1")  # loopback: no token needed


# ------------------------------------------------------------------------------------- MCP


@pytest.mark.e2e
def test_mcp_tools_generate_and_search(live_api: dict[str, Any]) -> None:
    from mcp import Client

    from synth_pipelines.service.mcp_server import build_mcp

    server = build_mcp(live_api["service"])

    async def session() -> dict[str, Any]:
        async with Client(server) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) >= {
                "synth_generate", "synth_status", "synth_validate", "synth_search",
                "synth_record_outcome", "synth_list_domains", "synth_plan",
            }  # fmt: skip
            forecast = await client.call_tool("synth_plan", {"domain": "data_analysis", "target_count": 6})
            assert not forecast.is_error, forecast.content
            assert forecast.structured_content["target_count"] == 6
            assert forecast.structured_content["assets"]
            assert tools["synth_search"].input_schema["properties"]["k"]["maximum"] == 100
            assert "domain" in tools["synth_generate"].input_schema["required"]
            listed = await client.call_tool("synth_list_domains", {})
            launched = await client.call_tool(
                "synth_generate", {"domain": "data_analysis", "target_count": 6}
            )
            assert not launched.is_error, launched.content
            run_id = launched.structured_content["run_id"]
            deadline = time.monotonic() + 400
            status: dict[str, Any] = {}
            while time.monotonic() < deadline:
                result = await client.call_tool("synth_status", {"run_id": run_id})
                status = result.structured_content["run"]
                if status["done"]:
                    break
                await asyncio.sleep(1.0)
            found = await client.call_tool(
                "synth_search", {"domain": "data_analysis", "query": "churn", "k": 2}
            )
            unknown = await client.call_tool("synth_search", {"domain": "nope", "query": "x"})
            spec = await client.read_resource("synth://domains/data_analysis/spec")
            card = await client.read_resource("synth://domains/data_analysis/card")
            return {
                "listed": listed.structured_content,
                "status": status,
                "found": found.structured_content,
                "unknown": unknown,
                "spec": spec,
                "card": card,
            }

    out = asyncio.run(session())
    assert {d["domain"] for d in out["listed"]["domains"]} >= {DOMAIN, "data_analysis"}
    assert out["status"]["success"] is True, out["status"]
    assert out["found"]["domain"] == "data_analysis" and len(out["found"]["hits"]) == 2
    assert out["found"]["hits"][0]["similarity"] >= out["found"]["hits"][1]["similarity"]
    assert out["unknown"].is_error and "nope" in out["unknown"].content[0].text
    assert "fields" in out["spec"].contents[0].text
    assert "data_analysis" in out["card"].contents[0].text


def test_mcp_over_stdio_lists_tools_and_domains(tmp_path: Path, schemas_dir: Path) -> None:
    """`synth mcp` as an MCP client launches it: the stdio transport, in its own process."""
    import sys

    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    synth = Path(sys.executable).parent / "synth"
    params = StdioServerParameters(
        command=str(synth),
        args=["mcp"],
        env={
            "SYNTH_WAREHOUSE": str(tmp_path / "wh"),
            "SYNTH_SCHEMAS": str(schemas_dir),
            "DAGSTER_HOME": str(tmp_path),
            "HF_HUB_OFFLINE": "1",
        },
    )

    async def session() -> tuple[set[str], dict[str, Any]]:
        async with Client(params) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            listed = await client.call_tool("synth_list_domains", {})
            return tools, listed.structured_content

    tools, listed = asyncio.run(session())
    assert "synth_search" in tools and "synth_generate" in tools
    from synth_pipelines.spec.loading import discover_specs

    assert sorted(d["domain"] for d in listed["domains"]) == sorted(discover_specs(schemas_dir))
    assert all(d["accepted"] == 0 for d in listed["domains"])


def test_a_statistical_domain_takes_no_target_count(tmp_path: Path, schemas_dir: Path) -> None:
    import dagster as dg

    from synth_pipelines.service.operations import ServiceError

    settings = ServiceSettings(
        warehouse_root=str(tmp_path / "wh"), state_dir=None, schemas_dir=str(schemas_dir), profile="local"
    )
    service = SynthService(settings, instance=dg.DagsterInstance.ephemeral())
    with pytest.raises(ServiceError, match="timeseries domain: its size is set in its spec") as err:
        service.launch("service_traffic", target_count=10)
    assert err.value.field == "target_count"
