"""Tier 6: the OpenAI-compatible path through the real ``openai`` client against a local fake server."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import pytest
import yaml
from pydantic import BaseModel, Field

from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.config import ProviderProfile, load_profile
from synth_pipelines.llm.factory import build_client
from synth_pipelines.llm.structured import endpoint_key
from synth_pipelines.llm.types import ChatMessage
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import materialization_metadata, materialize_domain
from synth_pipelines.spec.example_schema import json_schema_for_model
from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan

SENTINEL_KEY = "sk-SENTINEL-7f3a9c0e-never-log-me"


class Reply(BaseModel):
    answer: str = Field(min_length=1, max_length=60)
    score: int = Field(ge=1, le=5)


SCHEMA = json_schema_for_model(Reply)
MSGS = [ChatMessage(role="user", content="question")]


def profile_file(tmp_path: Path, base_url: str, **model_over) -> Path:
    model = {
        "kind": "openai",
        "base_url": base_url,
        "model_id": "fake-1",
        "api_key_env": "SYNTH_OPENAI_API_KEY",
        "timeout_s": 5,
        "max_retries": 3,
        "max_concurrency": 16,
        "input_price_per_mtok": 1.0,
        "output_price_per_mtok": 4.0,
        **model_over,
    }
    data = {
        "models": {"remote-a": model, "remote-b": {**model, "model_id": "fake-2"}},
        "roles": {
            "generator": ["remote-a", "remote-b"],
            "validators": [{"model": "remote-a", "weight": 1.0}, {"model": "remote-b", "weight": 0.5}],
            "program": "remote-a",
        },
    }
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


TRANSPORTS = ["aiohttp", "sdk"]


def client_for(tmp_path: Path, server: FakeOpenAIServer, *, probed: bool = True, **model_over) -> LLMClient:
    """A client of the fake server's two models. ``probed``: as if ``synth doctor`` had checked
    them (json_schema works), so the requests a test counts are its own calls only."""
    profile: ProviderProfile = load_profile(str(profile_file(tmp_path, server.base_url, **model_over)))
    client = build_client(
        profile, tmp_path / "cache.sqlite", api_key=SENTINEL_KEY, modes_path=tmp_path / "modes.sqlite"
    )
    if probed:
        for config in profile.models.values():
            client.modes.set(endpoint_key(config), "json_schema")
    return client


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_structured_output_through_openai_client(tmp_path: Path, transport: str) -> None:
    with FakeOpenAIServer() as server:
        client = client_for(tmp_path, server, transport=transport)
        res = client.structured(["remote-a"], MSGS, Reply, json_schema=SCHEMA, seed=1)
        assert res.ok and isinstance(res.value, Reply)
        assert server.stats.requests == 1
        assert server.stats.auth_headers == [f"Bearer {SENTINEL_KEY}"]  # the key is used ...
        assert client.totals.cost_usd > 0 and client.totals.prompt_tokens == 20
        again = client.structured(["remote-a"], MSGS, Reply, json_schema=SCHEMA, seed=1)
        assert again.ok and server.stats.requests == 1  # cached


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_429_honours_retry_after(tmp_path: Path, transport: str) -> None:
    with FakeOpenAIServer(FaultPlan(first_n_429=2, retry_after_s=0.3)) as server:
        client = client_for(tmp_path, server, transport=transport)
        import time

        started = time.perf_counter()
        res = client.structured(["remote-a"], MSGS, Reply, json_schema=SCHEMA)
        assert res.ok and server.stats.faults == {"429": 2} and server.stats.requests == 3
        assert time.perf_counter() - started >= 0.6  # two waits of Retry-After


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_500_retries_then_falls_back_to_next_model(tmp_path: Path, transport: str) -> None:
    with FakeOpenAIServer(FaultPlan(first_n_500=4)) as server:
        client = client_for(tmp_path, server, max_retries=3, transport=transport)
        res = client.structured(["remote-a", "remote-b"], MSGS, Reply, json_schema=SCHEMA)
        assert res.ok and res.record.model == "remote-b"
        assert server.stats.models[:4] == ["fake-1"] * 4 and server.stats.models[4] == "fake-2"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_timeout_is_retried(tmp_path: Path, transport: str) -> None:
    with FakeOpenAIServer(FaultPlan(first_n_hang=1, hang_s=3)) as server:
        client = client_for(tmp_path, server, timeout_s=0.5, transport=transport)
        res = client.structured(["remote-a"], MSGS, Reply, json_schema=SCHEMA)
        assert res.ok and server.stats.requests == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_broken_json_is_retried_then_recorded(tmp_path: Path, transport: str) -> None:
    with FakeOpenAIServer(FaultPlan(first_n_broken=1)) as server:
        client = client_for(tmp_path, server, transport=transport)
        res = client.structured(["remote-a"], MSGS, Reply, json_schema=SCHEMA)
        assert res.ok  # the second attempt (new seed) parses
    with FakeOpenAIServer(FaultPlan(rate_broken_json=1.0)) as server:
        (tmp_path / "b").mkdir()
        client = client_for(tmp_path / "b", server, transport=transport)
        res = client.structured(["remote-a", "remote-b"], MSGS, Reply, json_schema=SCHEMA)
        assert not res.ok and "invalid JSON" in (res.error or "")
        assert client.totals.failures == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_whole_graph_against_endpoint_and_key_never_leaks(
    tmp_path: Path, scripted_schemas_dir: Path, caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    caplog.set_level(logging.DEBUG)
    warehouse = tmp_path / "warehouse"
    with FakeOpenAIServer(
        FaultPlan(rate_429=0.05, rate_500=0.05, rate_broken_json=0.05, retry_after_s=0.01)
    ) as server:
        res = {
            "warehouse": WarehouseResource(root=str(warehouse), schemas_dir=str(scripted_schemas_dir)),
            "llm": LLMResource(
                profile=str(profile_file(tmp_path, server.base_url, transport=transport)),
                api_key=SENTINEL_KEY,
            ),
            "embedder": EmbedderResource(),
        }
        result = materialize_domain(
            "api_development", instance=dg.DagsterInstance.ephemeral(), target_count=8, resources=res
        )
        assert result.success
        meta = materialization_metadata(result)
        assert meta["raw_generations"]["rows"] == 8
        assert "remote-a" in meta["raw_generations"]["models_used"]
        assert server.stats.requests > 8
    # The sentinel key reached the server but nothing the project wrote or logged.
    for path in warehouse.rglob("*"):
        if path.is_file():
            assert SENTINEL_KEY.encode() not in path.read_bytes(), path
    assert SENTINEL_KEY not in caplog.text
    for event in result.all_events:
        assert SENTINEL_KEY not in str(event)
    assert SENTINEL_KEY not in str(meta)
