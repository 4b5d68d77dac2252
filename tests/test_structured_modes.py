"""Structured output that adapts to the server (issue 12): the mode fallback chain, the remembered
mode, the capability check before a fan-out, and provider errors that carry the server's message."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from synth_pipelines.cli import app
from synth_pipelines.llm.backends import _http_message
from synth_pipelines.llm.config import load_profile
from synth_pipelines.llm.replies import extract_json
from synth_pipelines.llm.structured import (
    ModeMemory,
    compact_schema,
    endpoint_key,
    is_mode_rejection,
    next_mode,
)
from synth_pipelines.llm.types import ChatMessage
from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from synth_pipelines.warehouse.inflight import InflightRows
from synth_pipelines.warehouse.tables import RAW_GENERATIONS
from tests.materialize import DOMAIN, failure_message, materialize_domain, up_to
from tests.test_openai_compat import client_for, profile_file

UP_TO_RAW = up_to("raw_generations")
UP_TO_VALIDATED = up_to("validated_examples")
TARGET = 6


class Reply(BaseModel):
    answer: str = Field(max_length=20)
    score: int = Field(ge=0, le=5)


SCHEMA = Reply.model_json_schema()


def _modes_db(warehouse: Path) -> dict[str, str]:
    return ModeMemory(warehouse / "cache" / "structured_modes.sqlite").all()


def _raw_modes(warehouse: Path) -> dict[str, int]:
    rows = duckdb.sql(
        f"select structured_output, count(*) from read_parquet('{warehouse}/raw_generations/*/*.parquet') "
        "where status = 'ok' group by 1"
    ).fetchall()
    return dict(rows)


# ------------------------------------------------------------------------------ the fallback chain


@pytest.mark.parametrize(
    ("rejected", "expected"),
    [
        (frozenset(), "json_schema"),
        (frozenset({"json_schema"}), "json_object"),
        (frozenset({"json_schema", "json_object"}), "tools"),
        (frozenset({"json_schema", "json_object", "tools"}), "prompt"),
    ],
)
def test_auto_finds_the_mode_the_server_takes_and_reuses_it(
    tmp_path: Path, scripted_schemas_dir: Path, rejected: frozenset[str], expected: str
) -> None:
    warehouse = tmp_path / "warehouse"
    with FakeOpenAIServer(FaultPlan(reject_modes=rejected)) as server:
        profile = profile_file(tmp_path, server.base_url)
        first = materialize_domain(
            UP_TO_VALIDATED, warehouse, scripted_schemas_dir, llm=str(profile), target=TARGET
        )
        assert first.success
        # Every generated row is valid and says how it was obtained; judges went the same way.
        assert _raw_modes(warehouse) == {expected: TARGET}
        assert set(_modes_db(warehouse).values()) == {expected}
        meta = {
            e.asset_key.path[-1]: e.step_materialization_data.materialization.metadata
            for e in first.all_events
            if e.is_step_materialization and e.asset_key is not None
        }
        for asset in ("raw_generations", "validated_examples"):
            modes = meta[asset]["structured_output"].value
            assert modes and set(modes.values()) == {expected}, (asset, modes)
        # Rejected modes were asked at most once per model and mode (the probe), never per item.
        rejected_requests = sum(n for kind, n in server.stats.faults.items() if kind.startswith("rejected_"))
        assert rejected_requests <= 2 * len(rejected)

        # A new run (new clients, new process state) reads the remembered mode: no rejection at all.
        faults_before = dict(server.stats.faults)
        requests_before = server.stats.requests
        again = materialize_domain(
            UP_TO_RAW, warehouse, scripted_schemas_dir, llm=str(profile), target=TARGET + 2,
        )  # fmt: skip
        assert again.success
        assert server.stats.faults == faults_before
        assert set(server.stats.modes[requests_before:]) == {expected}
    assert _raw_modes(warehouse) == {expected: TARGET + 2}


def test_explicit_mode_is_used_as_set_and_a_rejection_says_what_to_change(tmp_path: Path) -> None:
    with FakeOpenAIServer(FaultPlan(reject_modes=frozenset({"json_schema"}))) as server:
        client = client_for(tmp_path, server, probed=False, structured_output="tools")
        result = client.structured(["remote-a"], [_user("hi")], Reply, json_schema=SCHEMA)
        assert result.ok and result.record.structured_output == "tools"
        assert set(server.stats.modes) == {"tools"}
        # The endpoint check before the first call is billed too: the totals count every request.
        assert server.stats.requests == 2 and client.totals.model_calls == 2

    with FakeOpenAIServer(FaultPlan(reject_modes=frozenset({"json_schema"}))) as server:
        (tmp_path / "b").mkdir()
        client = client_for(tmp_path / "b", server, probed=True, structured_output="json_schema")
        result = client.structured(["remote-a"], [_user("hi")], Reply, json_schema=SCHEMA)
        assert not result.ok and result.failure_kind == "provider"
        assert "Input should be 'text' or 'json_object'" in (result.error or "")
        assert "Set structured_output in the provider profile" in (result.error or "")
        assert server.stats.requests == 1  # not retried: a rejection is not transient


@pytest.mark.parametrize("transport", ["aiohttp", "sdk"])
def test_both_transports_fall_back_mid_run(tmp_path: Path, transport: str) -> None:
    """A remembered mode the server no longer takes (upgraded, swapped) falls back on the spot."""
    plan = FaultPlan(reject_modes=frozenset({"json_schema", "json_object"}))
    with FakeOpenAIServer(plan) as server:
        client = client_for(tmp_path, server, transport=transport)  # remembered: json_schema
        results = client.pool(
            lambda i: client.astructured(["remote-a"], [_user(f"q{i}")], Reply, json_schema=SCHEMA, seed=i),
            range(12),
            width=6,
        )
        assert all(r.ok for r in results)
        assert {r.record.structured_output for r in results} == {"tools"}
        assert client.modes.get(endpoint_key(client.profile.models["remote-a"])) == "tools"
        assert server.stats.modes[-1] == "tools"


def _user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


# ------------------------------------------------------------------------------ the capability check


def test_first_run_checks_an_unknown_model_and_fails_fast_with_the_report(
    tmp_path: Path, scripted_schemas_dir: Path
) -> None:
    warehouse = tmp_path / "warehouse"
    with FakeOpenAIServer(FaultPlan(known_models=frozenset({"fake-2"}))) as server:
        profile = profile_file(tmp_path, server.base_url)  # remote-a asks for fake-1: unknown
        result = materialize_domain(
            UP_TO_RAW, warehouse, scripted_schemas_dir, llm=str(profile), target=40, raise_on_error=False
        )
        requests = server.stats.requests
    assert not result.success
    message = failure_message(result)
    assert "The model `fake-1` does not exist" in message and "check model_id ('fake-1')" in message
    assert requests == 1  # the check, and not one of the 40 items
    parts = InflightRows(warehouse / "raw_generations" / f"domain={DOMAIN}" / "_inflight", RAW_GENERATIONS)
    assert parts.written == 0 and not parts.part_files()


def test_doctor_reports_each_model_and_remembers_the_mode(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse"
    with FakeOpenAIServer(FaultPlan(reject_modes=frozenset({"json_schema"}))) as server:
        profile = profile_file(tmp_path, server.base_url)
        result = CliRunner().invoke(app, ["doctor", "--profile", str(profile), "--warehouse", str(warehouse)])
    assert result.exit_code == 0, result.output
    lines = {
        line.split()[0]: line.split() for line in result.output.splitlines() if line.startswith("remote-")
    }
    assert lines["remote-a"][2] == "yes" and lines["remote-b"][2] == "yes"
    assert "json_object" in lines["remote-a"] and "json_object" in lines["remote-b"]
    assert "json_schema: rejected (HTTP 500: body.response_format.type: Input should be" in result.output
    assert set(_modes_db(warehouse).values()) == {"json_object"}

    # A dead endpoint: a non-zero exit and what to change.
    (tmp_path / "dead").mkdir()
    dead = profile_file(tmp_path / "dead", server.base_url)  # the server is stopped now
    result = CliRunner().invoke(app, ["doctor", "--profile", str(dead), "--warehouse", str(tmp_path / "w2")])
    assert result.exit_code == 1
    assert (
        "NO" in result.output
        and "check base_url" in result.output
        and "is the server running" in result.output
    )


# ------------------------------------------------------------------------------ errors that explain


def test_the_servers_message_reaches_the_row_the_metadata_and_the_cli(
    tmp_path: Path, scripted_schemas_dir: Path
) -> None:
    warehouse = tmp_path / "warehouse"
    said = "KV cache is full (n_ctx=2048); shorten the prompt"
    with FakeOpenAIServer(FaultPlan(rate_500=1.0, error_message=said)) as server:
        profile = profile_file(tmp_path, server.base_url, max_retries=0)
        memory = ModeMemory(warehouse / "cache" / "structured_modes.sqlite")
        for config in load_profile(str(profile)).models.values():  # checked before (synth doctor)
            memory.set(endpoint_key(config), "json_schema")
        result = materialize_domain(
            UP_TO_RAW, warehouse, scripted_schemas_dir, llm=str(profile), target=TARGET, raise_on_error=False
        )
        # The row.
        parts = InflightRows(
            warehouse / "raw_generations" / f"domain={DOMAIN}" / "_inflight", RAW_GENERATIONS
        )
        errors = parts.read_columns(["error"]).column("error").to_pylist()
        assert len(errors) == TARGET
        assert all(f"model 'remote-a': HTTP 500: {said}" in e for e in errors)
        # The metadata of the failed run.
        failure = next(e for e in result.all_events if e.is_step_failure)
        user = failure.step_failure_data.user_failure_data
        assert user is not None
        reasons = user.metadata["failure_reasons"].value
        assert any(said in reason for reason in reasons)
        assert said in (user.description or "")
        # The CLI's one line.
        cli = CliRunner().invoke(
            app,
            ["generate", "--domain", DOMAIN, "--count", str(TARGET), "--profile", str(profile),
             "--warehouse", str(warehouse), "--schemas", str(scripted_schemas_dir)],
        )  # fmt: skip
    assert cli.exit_code == 1
    last = [line for line in cli.output.splitlines() if line.startswith("error:")]
    assert last and said in last[-1]


# ------------------------------------------------------------------------------ the pieces


@pytest.mark.parametrize(
    ("status", "body", "mode", "expected"),
    [
        (500, "body.response_format.type: Input should be 'text' or 'json_object'", "json_schema", True),
        (400, "response_format json_schema is not supported for this model", "json_schema", True),
        (422, "Extra inputs are not permitted: tools", "tools", True),
        (400, "'tools' is not supported with this model.", "tools", True),
        (500, "internal error", "json_schema", False),  # an outage, not a rejection
        (503, "response_format not supported", "json_schema", False),  # 503: overloaded, retry
        (400, "This model's maximum context length is 4096 tokens", "json_schema", False),
        (400, "response_format is not supported", None, False),
    ],
)
def test_mode_rejections_are_told_apart_from_other_errors(
    status: int, body: str, mode: str | None, expected: bool
) -> None:
    assert is_mode_rejection(status, body, mode) is expected  # type: ignore[arg-type]


def test_mode_chain_order() -> None:
    assert next_mode("auto", "json_schema") == "json_object"
    assert next_mode("auto", "json_object") == "tools"
    assert next_mode("auto", "tools") == "prompt"
    assert next_mode("auto", "prompt") is None
    assert next_mode("json_object", "json_object") is None  # an explicit mode has no fallback


def test_prompt_mode_reply_yields_the_first_json_object() -> None:
    text = 'Sure! Here it is:\n```json\n{"answer": "ok", "score": 3}\n```\nAnything else? {}'
    assert extract_json(text) == {"answer": "ok", "score": 3}
    assert extract_json('{"a": {"b": 1}} and then {"c": 2}') == {"a": {"b": 1}}
    rendered = compact_schema(SCHEMA)
    assert "title" not in rendered and json.loads(rendered)["required"] == ["answer", "score"]


def test_server_validation_dumps_become_one_readable_line() -> None:
    body = json.dumps(
        {"error": {"message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
         "'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", "
         "'input': 'json_schema'}\n\n  File \"/srv/app.py\", line 376"}}
    )  # fmt: skip
    assert (
        _http_message(500, body, None)
        == "HTTP 500: body.response_format.type: Input should be 'text' or 'json_object'"
    )
    assert _http_message(401, '{"error": {"message": "bad key sk-SECRET-123"}}', "sk-SECRET-123") == (
        "HTTP 401: bad key ***"
    )
