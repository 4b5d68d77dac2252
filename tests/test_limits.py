"""Per-model admission control: AIMD concurrency, the circuit breaker, and RPM/TPM buckets that hold
across processes, tested on their own and through :class:`LLMClient`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.config import ModelConfig, ProviderProfile, Roles, WeightedModel
from synth_pipelines.llm.limits import AdaptiveLimit, CircuitBreaker, CircuitOpen, RateBuckets
from synth_pipelines.llm.types import ChatMessage, ProviderError
from synth_pipelines.spec.example_schema import json_schema_for_model
from tests.scripted import ScriptedBackend

REPO = Path(__file__).resolve().parent.parent


class Answer(BaseModel):
    text: str = Field(max_length=40)


SCHEMA = json_schema_for_model(Answer)


# ------------------------------------------------------------------------------------------ AIMD


def test_slow_start_doubles_per_round_until_the_ceiling() -> None:
    limit = AdaptiveLimit(ceiling=64, initial=4)
    rounds = []
    for _ in range(6):
        for _ in range(int(limit.limit)):  # one round trip: every slot in use succeeds once
            limit.on_success()
        rounds.append(limit.limit)
    assert rounds == [8, 16, 32, 64, 64, 64]


def test_congestion_halves_once_per_episode_then_grows_additively() -> None:
    limit = AdaptiveLimit(ceiling=64, initial=32)
    limit.on_congestion(hold_s=60)
    limit.on_congestion(hold_s=60)  # the same round trip's other 429s: no second cut
    assert limit.limit == 16 and limit.cuts == 1 and not limit.slow_start
    for _ in range(16):  # one full round of successes after congestion: +1 in total
        limit.on_success()
    assert limit.limit == pytest.approx(17, abs=0.05)


def test_in_flight_never_exceeds_the_adaptive_limit() -> None:
    async def run() -> int:
        limit = AdaptiveLimit(ceiling=10, initial=3)
        peak = 0

        async def call(i: int) -> None:
            nonlocal peak
            async with limit.slot():
                peak = max(peak, limit.in_flight)
                assert limit.in_flight <= int(limit.limit)
                await asyncio.sleep(0.01)
                if i == 5:
                    limit.on_congestion()
                else:
                    limit.on_success()

        await asyncio.gather(*(call(i) for i in range(60)))
        return peak

    assert 3 <= asyncio.run(run()) <= 10


def test_fixed_concurrency_when_not_adaptive() -> None:
    limit = AdaptiveLimit(ceiling=7, adaptive=False)
    limit.on_congestion()
    limit.on_success()
    assert limit.limit == 7


# -------------------------------------------------------------------------------------- breaker


def _connection_error() -> ProviderError:
    return ProviderError("m", "cannot reach http://127.0.0.1:9/v1 (ClientConnectorError)", kind="connection")


def test_breaker_opens_after_consecutive_connection_failures() -> None:
    breaker = CircuitBreaker("m", "http://127.0.0.1:9/v1", consecutive=5)
    for _ in range(4):
        breaker.record_failure(_connection_error(), connection=True)
        breaker.check()
    breaker.record_failure(_connection_error(), connection=True)
    with pytest.raises(CircuitOpen) as e:
        breaker.check()
    message = str(e.value)
    assert "http://127.0.0.1:9/v1" in message and "5 connection failures in a row" in message
    assert "rerun resumes" in message


def test_breaker_ignores_scattered_errors_but_trips_on_a_high_error_rate() -> None:
    breaker = CircuitBreaker("m", "e", window=50, error_rate=0.9, min_calls=20)
    server_error = ProviderError("m", "HTTP 500: boom", kind="http", status=500)
    for i in range(200):  # 30% errors, never more than a few in a row: stays closed
        if i % 10 < 3:
            breaker.record_failure(server_error, connection=False)
        else:
            breaker.record_success()
    breaker.check()
    for _ in range(50):
        breaker.record_failure(server_error, connection=False)
    with pytest.raises(CircuitOpen, match="of the last 50 calls failed"):
        breaker.check()


def test_breaker_half_open_probe_closes_it() -> None:
    breaker = CircuitBreaker("m", "e", consecutive=1, reset_s=0.05)
    breaker.record_failure(_connection_error(), connection=True)
    with pytest.raises(CircuitOpen):
        breaker.check()
    time.sleep(0.06)
    breaker.check()  # the probe may go
    with pytest.raises(CircuitOpen):
        breaker.check()  # but only one probe at a time
    breaker.record_success()
    breaker.check()
    assert not breaker.is_open


# --------------------------------------------------------------------------------- rate buckets


def test_rpm_bucket_spaces_requests_once_the_burst_is_spent() -> None:
    async def run() -> float:
        bucket = RateBuckets("spacing-test", rpm=600, tpm=None)  # 10/s, burst 600
        for _ in range(600):
            await bucket.admit(1)
        started = time.monotonic()
        for _ in range(3):
            await bucket.admit(1)
        return time.monotonic() - started

    assert asyncio.run(run()) >= 0.25  # 3 requests at 10/s need ~0.3 s


def test_tpm_caps_a_huge_request_at_the_bucket_size() -> None:
    async def run() -> float:
        bucket = RateBuckets("huge-test", rpm=None, tpm=60_000)
        started = time.monotonic()
        await bucket.admit(10_000_000)  # more than a minute's quota: takes the whole bucket, no more
        return time.monotonic() - started

    assert asyncio.run(run()) < 0.5


SHARED_ADMITS = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from synth_pipelines.llm.limits import RateBuckets
    path = Path(sys.argv[1]) if sys.argv[1] != "-" else None
    bucket = RateBuckets("shared-model", rpm=1200, tpm=None, path=path)
    async def run():
        for _ in range(int(sys.argv[2])):
            await bucket.admit(1)
    start = time.time()
    asyncio.run(run())
    print(time.time() - start)
    """
)


def _two_processes(path: str, admits: int) -> float:
    started = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-c", SHARED_ADMITS, path, str(admits)], cwd=REPO) for _ in range(2)
    ]
    assert [p.wait(120) for p in procs] == [0, 0]
    return time.monotonic() - started


def test_rpm_holds_across_processes_through_the_state_folder(tmp_path: Path) -> None:
    # 1,200/min = 20/s with a burst of 1,200. Two processes take 630 each: together 60 over the
    # burst, which a shared bucket spreads over ~3 s; two private buckets never wait.
    shared = _two_processes(str(tmp_path / "limits.sqlite"), 630)
    private = _two_processes("-", 630)
    assert shared >= 2.5
    assert private < shared - 1.5


# ---------------------------------------------------------------------------- through the client


def _profile(**config: object) -> ProviderProfile:
    model = ModelConfig(kind="openai", base_url="http://127.0.0.1:9/v1", model_id="m", **config)  # type: ignore[arg-type]
    return ProviderProfile(
        name="limits",
        models={"m": model},
        roles=Roles(generator=["m"], validators=[WeightedModel(model="m")], program="m"),
    )


def _calls(client: LLMClient, n: int) -> float:
    async def one(i: int) -> None:
        result = await client.astructured(
            ["m"], [ChatMessage(role="user", content=f"q{i}")], Answer, json_schema=SCHEMA
        )
        assert result.ok

    started = time.monotonic()
    client.pool(one, range(n), width=32)
    return time.monotonic() - started


def test_client_throttles_to_the_rpm_limit(tmp_path: Path) -> None:
    limited = LLMClient(_profile(rpm=600), {"m": ScriptedBackend("m")}, limits_path=tmp_path / "l.sqlite")
    free = LLMClient(_profile(), {"m": ScriptedBackend("m")})
    # 620 calls against 600/min (10/s, burst 600): the last 20 are spread over ~2 s.
    assert _calls(limited, 620) >= 1.5
    assert limited.gate_stats()["m"]["rate_limit_wait_s"] > 1.0
    assert _calls(free, 620) < 1.5


def test_client_fails_fast_when_the_endpoint_is_down() -> None:
    def refuse(request, call_no):
        raise ProviderError(
            "m",
            "cannot reach http://127.0.0.1:9/v1 (ClientConnectorError)",
            retryable=True,
            kind="connection",
        )

    async def no_sleep(seconds: float) -> None:
        return None

    backend = ScriptedBackend("m", script=refuse)
    client = LLMClient(_profile(max_retries=4), {"m": backend}, sleep=no_sleep)
    started = time.monotonic()
    with pytest.raises(CircuitOpen, match="looks down"):
        _calls(client, 500)
    assert time.monotonic() - started < 5
    assert backend.calls < 50  # not 500 items x 5 attempts
    assert client.gate_stats()["m"]["breaker_opened"] == 1
