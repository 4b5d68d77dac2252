"""``synth benchmark``: two strategies on the fake OpenAI server, one shared cache; the report's
counts and dollars are checked against what the server answered and what the cache holds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from synth_pipelines.cli import app
from synth_pipelines.llm.config import load_profile
from synth_pipelines.strategy_benchmark import BUILTIN_STRATEGIES, strategy_profile
from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from tests.test_openai_compat import profile_file

REPO = Path(__file__).resolve().parent.parent
LABELLED = REPO / "tests" / "data" / "labelled" / "api_development.jsonl"
runner = CliRunner()


def _bench(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["benchmark", "--domain", "api_development", *args])
    return result.exit_code, result.output


def test_benchmark_report_matches_the_server_and_the_cache(
    tmp_path: Path, scripted_schemas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTH_OPENAI_API_KEY", "sk-test")
    report_file = tmp_path / "report.json"
    workdir = tmp_path / "bench"
    with FakeOpenAIServer(FaultPlan(latency_s=0.002)) as server:
        profile = profile_file(tmp_path, server.base_url)
        common = ["--count", "8", "--schemas", str(scripted_schemas_dir), "--profile", str(profile)]
        common += ["--workdir", str(workdir), "--labelled", str(LABELLED)]
        # The endpoints checked first (as `synth doctor` does), so every request after is a run's.
        doctor = runner.invoke(app, ["doctor", "--profile", str(profile), "--warehouse", str(workdir)])
        assert doctor.exit_code == 0, doctor.output
        checked = server.stats.requests
        code, out = _bench("--strategies", "single-model,multi-model", "--output", str(report_file), *common)
        assert code == 0, out
        served = server.stats.requests - checked
        report = json.loads(report_file.read_text())
        single, multi = report["strategies"]
        assert (single["strategy"], multi["strategy"]) == ("single-model", "multi-model")
        assert single["validators"] == ["remote-a"] and multi["validators"] == ["remote-a", "remote-b"]
        assert single["generator"] == ["remote-a"] and multi["generator"] == ["remote-a", "remote-b"]
        # Calls: what the server answered is what the strategies billed.
        assert single["model_calls"] + multi["model_calls"] == served
        # The shared cache holds one reply per billed call, and its token counts price to the dollars.
        with sqlite3.connect(workdir / "cache" / "responses.sqlite") as conn:
            cached = conn.execute("select model, body from responses").fetchall()
        assert single["model_calls"] > 0 and multi["model_calls"] > 0
        assert len(cached) == served
        prices = load_profile(str(profile)).models
        dollars = sum(
            prices[m].cost(json.loads(b)["prompt_tokens"], json.loads(b)["completion_tokens"])
            for m, b in cached
        )
        assert single["cost_usd"] + multi["cost_usd"] == pytest.approx(dollars, rel=1e-6)
        # multi-model's generation requests are single-model's (same first generator and seeds):
        # served from the shared cache, so it pays less than a cold run would.
        assert multi["cache_hits"] >= multi["raw_rows"] == 8
        assert multi["cold_cost_usd"] > multi["cost_usd"]
        assert single["cold_cost_usd"] == pytest.approx(single["cost_usd"], rel=1e-6)
        for r in (single, multi):
            assert r["success"] and r["raw_rows"] == 8
            assert r["pass_rate"] == pytest.approx(r["accepted"] / 8)
            assert r["judge_kappa"] is not None and r["diversity"] is not None
            assert r["rows_per_s"] == pytest.approx(r["accepted"] / r["wall_s"], rel=0.02)
            assert r["program_score"] is None  # neither strategy compiles a program
        assert "pass_rate" in out and "single-model" in out
        # Again, compared with the first report: every reply is now cached, nothing new is billed.
        code, out = _bench("--strategies", "single-model,multi-model", "--compare", str(report_file), *common)
        assert code == 0, out
        assert server.stats.requests == served + checked
    line = next(x for x in out.splitlines() if x.startswith("pass_rate"))
    assert "(+0)" in line
    calls = next(x for x in out.splitlines() if x.startswith("model_calls"))
    assert f"0 ({-single['model_calls']:+d})" in calls


def test_strategies_are_validated_before_anything_runs(tmp_path: Path, scripted_schemas_dir: Path) -> None:
    code, out = _bench("--strategies", "multi-model,quantum", "--schemas", str(scripted_schemas_dir))
    assert code != 0 and "unknown strategies ['quantum']" in out
    custom = tmp_path / "strategies.yaml"
    custom.write_text(yaml.safe_dump({"strict": {"generator": ["nope"]}}))
    profile = load_profile("local")
    with pytest.raises(ValueError, match=r"generator names models \['nope'\]"):
        from synth_pipelines.llm.config import profile_path
        from synth_pipelines.strategy_benchmark import load_strategies

        strategy_profile(profile, profile_path("local"), load_strategies(["strict"], custom)["strict"])
    assert BUILTIN_STRATEGIES["dspy-multi-model"].program
