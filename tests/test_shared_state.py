"""Shared state for workers on several machines: the response cache and the RPM/TPM buckets in
Redis (``SYNTH_SHARED_STATE``), against a real redis-server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from synth_pipelines.llm.cache import KeyFilter, open_response_cache
from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.limits import RateBuckets, _MemoryBuckets
from synth_pipelines.llm.redis_state import RedisBuckets, RedisResponseCache, redis_client
from synth_pipelines.llm.types import ChatMessage, RawCompletion
from synth_pipelines.resources import LLMResource
from synth_pipelines.spec.example_schema import json_schema_for_model
from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from tests.scripted import ScriptedBackend, scripted_profile

REPO = Path(__file__).resolve().parent.parent


class Answer(BaseModel):
    text: str = Field(max_length=40)


SCHEMA = json_schema_for_model(Answer)


def _reply(text: str) -> RawCompletion:
    return RawCompletion(text=text, prompt_tokens=3, completion_tokens=2, finish_reason="stop")


def test_the_redis_cache_keeps_the_first_reply_and_logs_each_key_once(redis_url: str) -> None:
    cache = open_response_cache(redis_url)
    assert isinstance(cache, RedisResponseCache)
    redis_client(redis_url).flushdb()
    k1, k2, k3 = ("1" * 64), ("2" * 64), ("3" * 64)  # request keys are SHA-256 hex digests
    cache.put_many([(k1, "m", _reply("one")), (k2, "m", _reply("two"))])
    cache.put(k1, "m", _reply("later"))  # a key is answered once, as SQLite's primary key
    assert cache.get(k1) == _reply("one") and cache.get(k3) is None
    assert set(cache.get_many([k1, k2, k3])) == {k1, k2}
    assert len(cache) == 2
    assert [k for _, k in cache.keys_since(0)] == [k1, k2] and cache.keys_since(1) == [(2, k2)]
    # The client's Bloom filter reads it as it reads the SQLite cache.
    bloom = KeyFilter(cache)
    bloom.load()
    assert bloom.maybe(k1) and bloom.maybe(k2) and not bloom.maybe(k3)


def test_a_second_worker_gets_the_first_workers_replies_from_redis(redis_url: str) -> None:
    redis_client(redis_url).flushdb()
    first, second = ScriptedBackend("gen-a"), ScriptedBackend("gen-a")
    msgs = [[ChatMessage(role="user", content=f"q{i}")] for i in range(20)]

    def run(backend: ScriptedBackend) -> LLMClient:
        client = LLMClient(scripted_profile(), {"gen-a": backend}, open_response_cache(redis_url))
        for m in msgs:
            assert client.structured(["gen-a"], m, Answer, json_schema=SCHEMA).ok
        client.flush()
        return client

    run(first)
    again = run(second)
    assert first.calls == 20 and second.calls == 0 and again.totals.cache_hits == 20


def test_redis_buckets_reserve_like_the_local_ones(redis_url: str) -> None:
    redis_client(redis_url).flushdb()
    remote, local = RedisBuckets(redis_url), _MemoryBuckets()
    # 60/min: a burst of 60, then one a second; a reservation past the burst waits its turn.
    remote_waits = [remote.reserve("m:rpm", 1, 60) for _ in range(63)]
    local_waits = [local.reserve("local:rpm", 1, 60) for _ in range(63)]
    for waits in (remote_waits, local_waits):
        assert max(waits[:60]) == 0.0
        assert all(abs(wait - expected) < 0.15 for wait, expected in zip(waits[60:], (1, 2, 3), strict=True))
    assert isinstance(RateBuckets("m", 600, None, redis_url)._store, RedisBuckets)


def test_a_non_redis_shared_state_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTH_SHARED_STATE", "postgres://user:hunter2@db/synth")
    with pytest.raises(ValueError, match="is not a Redis URL") as info:
        LLMResource().shared_location()
    assert "hunter2" not in str(info.value)


def test_an_unreachable_redis_fails_before_any_call_with_the_url_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synth_pipelines.testing.redis_server import _free_port

    monkeypatch.setenv("SYNTH_SHARED_STATE", f"redis://:hunter2@127.0.0.1:{_free_port()}/0")
    with pytest.raises(RuntimeError, match=r"redis://:\*\*\*@127.0.0.1:\d+/0.*does not answer") as info:
        LLMResource().client(tmp_path / "cache.sqlite")
    assert "hunter2" not in str(info.value) and "unset SYNTH_SHARED_STATE" in str(info.value)


WORKER = textwrap.dedent(
    """
    import sys
    from pydantic import BaseModel, Field
    from synth_pipelines.llm.client import LLMClient
    from synth_pipelines.llm.config import ModelConfig, ProviderProfile, Roles, WeightedModel
    from synth_pipelines.llm.factory import backend_for
    from synth_pipelines.llm.types import ChatMessage
    from synth_pipelines.spec.example_schema import json_schema_for_model

    class Reply(BaseModel):
        answer: str = Field(min_length=1, max_length=40)

    base_url, limits, worker, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    config = ModelConfig(kind="openai", base_url=base_url, model_id="m", rpm=600, max_concurrency=32)
    roles = Roles(generator=["m"], validators=[WeightedModel(model="m")], program="m")
    profile = ProviderProfile(name="w", models={"m": config}, roles=roles)
    client = LLMClient(profile, {"m": backend_for("m", config, None)},
                       limits_path=None if limits == "-" else limits)
    schema = json_schema_for_model(Reply)

    async def one(i):
        messages = [ChatMessage(role="user", content=f"worker {worker} question {i}")]
        return (await client.astructured(["m"], messages, Reply, json_schema=schema)).ok

    results = client.pool(one, range(n), width=32)
    sys.exit(0 if all(results) else 1)
    """
)


def _two_workers(base_url: str, limits: str, n: int) -> float:
    started = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, base_url, limits, str(w), str(n)], cwd=REPO)
        for w in range(2)
    ]
    assert [p.wait(180) for p in procs] == [0, 0]
    return time.monotonic() - started


def test_two_workers_under_a_shared_rpm_limit_never_exceed_it_at_the_endpoint(redis_url: str) -> None:
    """The endpoint allows 600 requests a minute (a burst of 600, then 10/s) and answers 429 past
    it. Two worker processes make 330 calls each: with the buckets in Redis the endpoint never sees
    one request over its quota; with a private bucket each, both spend the burst and it does."""
    redis_client(redis_url).flushdb()
    with FakeOpenAIServer(FaultPlan(rpm_limit=600)) as server:
        shared_s = _two_workers(server.base_url, redis_url, 330)
        over_shared = server.stats.faults.get("rpm_exceeded", 0)
        ok_shared = server.stats.ok
    assert over_shared == 0 and ok_shared >= 660  # (and one structured-output check per worker)
    assert shared_s >= 5.0  # the 60 calls past the burst, at 10/s
    with FakeOpenAIServer(FaultPlan(rpm_limit=600)) as server:
        _two_workers(server.base_url, "-", 330)
        assert server.stats.faults.get("rpm_exceeded", 0) > 20
