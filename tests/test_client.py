"""Tier 2: the provider layer with a scripted backend — cache, retries, fallback, parse repair, budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from synth_pipelines.llm.cache import ResponseCache
from synth_pipelines.llm.client import BudgetExhausted, LLMClient
from synth_pipelines.llm.replies import extract_json, parse_reply
from synth_pipelines.llm.types import ChatMessage, ProviderError
from synth_pipelines.spec.example_schema import json_schema_for_model
from tests.scripted import ScriptedBackend, failing, scripted_profile


class Answer(BaseModel):
    text: str = Field(max_length=40)
    n: int = Field(ge=0, le=10)


SCHEMA = json_schema_for_model(Answer)
MSGS = [ChatMessage(role="user", content="hi")]


async def no_sleep(seconds: float) -> None:
    return None


def make_client(tmp_path: Path, backends: dict[str, ScriptedBackend], **kw) -> LLMClient:
    return LLMClient(scripted_profile(), backends, ResponseCache(tmp_path / "c.sqlite"), sleep=no_sleep, **kw)


def backends(**scripts) -> dict[str, ScriptedBackend]:
    return {
        n: ScriptedBackend(n, scripts.get(n.replace("-", "_")))
        for n in ("gen-a", "gen-b", "judge-a", "judge-b")
    }


def test_structured_parses_and_accounts(tmp_path: Path) -> None:
    b = backends()
    client = make_client(tmp_path, b)
    res = client.structured(["gen-a"], MSGS, Answer, json_schema=SCHEMA)
    assert res.ok and isinstance(res.value, Answer)
    assert client.totals.model_calls == 1 and client.totals.cache_hits == 0
    assert client.totals.cost_usd > 0
    assert res.prompt_hash


def test_cache_makes_rerun_free_and_changes_invalidate(tmp_path: Path) -> None:
    b = backends()
    make_client(tmp_path, b).structured(["gen-a"], MSGS, Answer, json_schema=SCHEMA, seed=1)
    client = make_client(tmp_path, b)
    res = client.structured(["gen-a"], MSGS, Answer, json_schema=SCHEMA, seed=1)
    assert (
        res.ok and b["gen-a"].calls == 1 and client.totals.cache_hits == 1 and client.totals.model_calls == 0
    )
    client.structured(
        ["gen-a"], [ChatMessage(role="user", content="changed")], Answer, json_schema=SCHEMA, seed=1
    )
    client.structured(["gen-a"], MSGS, Answer, json_schema=SCHEMA, seed=2)
    assert b["gen-a"].calls == 3


def test_malformed_reply_is_retried_then_recorded_not_raised(tmp_path: Path) -> None:
    b = backends(gen_a=lambda req, n: "{not json", gen_b=lambda req, n: json.dumps({"text": "x", "n": 99}))
    client = make_client(tmp_path, b)
    res = client.structured(["gen-a", "gen-b"], MSGS, Answer, json_schema=SCHEMA)
    assert not res.ok
    assert "invalid JSON" in (res.error or "") and "schema violation at n" in (res.error or "")
    assert b["gen-a"].calls == 2 and b["gen-b"].calls == 2  # parse_attempts per model, then fallback
    assert client.totals.failures == 1


def test_retryable_errors_retry_then_fall_back(tmp_path: Path) -> None:
    b = backends(gen_a=failing("gen-a"))
    client = make_client(tmp_path, b)
    res = client.structured(["gen-a", "gen-b"], MSGS, Answer, json_schema=SCHEMA)
    assert res.ok and res.record.model == "gen-b"
    assert b["gen-a"].calls == 3  # 1 + max_retries(2)


def test_429s_draw_on_their_own_budget_so_throttling_never_loses_a_row(tmp_path: Path) -> None:
    """max_retries is 2, yet ten 429s in a row still end in a reply (rate_limit_retries is 12),
    while the third 500 in a row falls back: throttling is not breakage."""
    calls = {"n": 0}

    def throttled(req, n):
        calls["n"] += 1
        if calls["n"] <= 10:
            raise ProviderError("gen-a", "429", retryable=True, kind="rate_limit")
        return None

    b = backends(gen_a=throttled)
    res = make_client(tmp_path, b).structured(["gen-a", "gen-b"], MSGS, Answer, json_schema=SCHEMA)
    assert res.ok and res.record.model == "gen-a" and b["gen-a"].calls == 11

    b = backends(gen_a=failing("gen-a", status=429))
    res = make_client(tmp_path / "all", b).structured(["gen-a", "gen-b"], MSGS, Answer, json_schema=SCHEMA)
    assert res.ok and res.record.model == "gen-b" and b["gen-a"].calls == 13  # 1 + rate_limit_retries


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    waits: list[float] = []
    calls = {"n": 0}

    def flaky(req, n):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ProviderError("gen-a", "429", retryable=True, retry_after=7)
        return None

    async def record_sleep(seconds: float) -> None:
        waits.append(seconds)

    b = backends(gen_a=flaky)
    client = LLMClient(scripted_profile(), b, None, sleep=record_sleep)
    assert client.structured(["gen-a"], MSGS, Answer, json_schema=SCHEMA).ok
    assert waits == [7]


def test_budget_stops_cleanly(tmp_path: Path) -> None:
    client = make_client(tmp_path, backends(), budget_tokens=1)
    client.structured(["gen-a"], MSGS, Answer, json_schema=SCHEMA, seed=1)
    with pytest.raises(BudgetExhausted, match="budget of 1 tokens"):
        client.structured(["gen-a"], MSGS, Answer, json_schema=SCHEMA, seed=2)


def test_extract_json_repairs_fences_and_chatter() -> None:
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Sure! {"a": 2} hope that helps') == {"a": 2}
    value, reason = parse_reply("", Answer)
    assert value is None and reason == "empty reply"


def test_cache_is_shared_across_instances(tmp_path: Path) -> None:
    from synth_pipelines.llm.types import RawCompletion

    c1, c2 = ResponseCache(tmp_path / "x.sqlite"), ResponseCache(tmp_path / "x.sqlite")
    c1.put("k", "m", RawCompletion(text="hello"))
    assert c2.get("k").text == "hello" and len(c2) == 1


def test_cache_is_safe_with_concurrent_writer_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "shared.sqlite"
    script = (
        "import sys\n"
        "from synth_pipelines.llm.cache import ResponseCache\n"
        "from synth_pipelines.llm.types import RawCompletion\n"
        "c = ResponseCache(sys.argv[1])\n"
        "for i in range(300):\n"
        "    c.put(f'{sys.argv[2]}-{i}', 'm', RawCompletion(text=str(i)))\n"
        "    assert c.get(f'{sys.argv[2]}-{i}').text == str(i)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), tag]) for tag in ("a", "b", "c")]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    assert len(ResponseCache(path)) == 900
