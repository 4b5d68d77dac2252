"""The parts that keep large runs linear and reruns cheap: content caches, bounded samples, progress,
adaptive concurrency against a server that pushes back, and the ONNX embedding backends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel, Field

import synth_pipelines.llm.embeddings as embeddings
from synth_pipelines.llm.cache import KeyFilter, ResponseCache, request_key
from synth_pipelines.llm.types import ChatMessage, CompletionRequest, RawCompletion
from synth_pipelines.spec.loading import parse_spec
from synth_pipelines.validation.diversity import similarity_sample
from synth_pipelines.warehouse.progress import Progress, read_progress

# ------------------------------------------------------------------------------ response cache filter


def _key(i: int) -> str:
    request = CompletionRequest(model="m", messages=(ChatMessage(role="user", content=f"q{i}"),))
    return request_key(request, attempt=0, model_fingerprint="fp")


def test_key_filter_answers_misses_and_sees_other_writers(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.put_many([(_key(i), "m", RawCompletion(text=str(i))) for i in range(100)])
    bloom = KeyFilter(cache)
    bloom.load()
    assert all(bloom.maybe(_key(i)) for i in range(100))  # never a false negative
    absent = [_key(i) for i in range(1000, 3000)]
    assert sum(bloom.maybe(k) for k in absent) < 20  # false positives are rare (~0.2%)
    # Another process writes: visible after a refresh, without reloading everything.
    ResponseCache(tmp_path / "c.sqlite").put(_key(5000), "m", RawCompletion(text="late"))
    assert not bloom.maybe(_key(5000))
    bloom.refresh()
    assert bloom.maybe(_key(5000))
    bloom.add(_key(6000))  # this process's own write: at once
    assert bloom.maybe(_key(6000))


# ---------------------------------------------------------------------------------- embedding cache


def test_embedding_cache_computes_each_text_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []

    def fake_compute(texts, folder, batch_size, backend):  # stands in for the model
        computed.extend(texts)
        return np.stack([np.full(384, len(t), dtype=np.float32) for t in texts])

    monkeypatch.setattr(embeddings, "_compute", fake_compute)
    path = tmp_path / "emb.sqlite"
    first = embeddings.embed_texts(["a", "bb", "a"], cache_path=path)
    assert computed == ["a", "bb", "a"]
    computed.clear()
    again = embeddings.embed_texts(["bb", "ccc", "a"], cache_path=path)
    assert computed == ["ccc"]  # only the new text reached the model
    assert np.array_equal(again[0], first[1]) and np.array_equal(again[2], first[0])
    computed.clear()
    embeddings.embed_texts(["a"], cache_path=path, backend="onnx-int8")
    assert computed == ["a"]  # another backend's vectors are not reused


# ------------------------------------------------------------------------------------ GE result cache


def test_great_expectations_verdict_is_reused_for_identical_inputs(tmp_path: Path) -> None:
    from synth_pipelines.validation.ge_suite import run_suite_cached

    spec = parse_spec(
        {
            "name": "t",
            "version": 1,
            "domain": "demo",
            "type": "api-example",
            "description": "d",
            "fields": {"q": {"type": "string", "max_length": 10}},
        }
    )
    data = ['{"q": "abc"}', '{"q": "abd"}']
    first = run_suite_cached(spec, data, tmp_path)
    again = run_suite_cached(spec, data, tmp_path)
    assert first["cached"] is False and again["cached"] is True
    assert again["success"] == first["success"] and again["statistics"] == first["statistics"]
    changed = run_suite_cached(spec, [*data, '{"q": "waytoolongvalue"}'], tmp_path)
    assert changed["cached"] is False and changed["success"] is False


# --------------------------------------------------------------------------------- bounded samples


def test_similarity_sample_is_exact_when_small_and_bounded_when_large() -> None:
    rng = np.random.default_rng(0)
    small = rng.standard_normal((40, 8)).astype(np.float32)
    small /= np.linalg.norm(small, axis=1, keepdims=True)
    sims, pairs, exact = similarity_sample(small, max_pairs=10_000)
    assert exact and pairs == 40 * 39 // 2
    full = small @ small.T
    assert np.allclose(np.sort(sims), np.sort(full[np.triu_indices(40, 1)]), atol=1e-6)
    big = rng.standard_normal((20_000, 8)).astype(np.float32)
    big /= np.linalg.norm(big, axis=1, keepdims=True)
    sims, pairs, exact = similarity_sample(big, max_pairs=5_000)
    assert not exact and pairs == len(sims) == 5_000
    # Random unit vectors in 8-d: cosine ~ N(0, 1/8); the sample sees the same distribution.
    assert abs(float(np.mean(sims))) < 0.02 and 0.3 < float(np.std(sims)) < 0.4


def test_stratified_sample_keeps_every_cell_in_proportion() -> None:
    from synth_pipelines.learning.program import mean_ci, stratified_sample

    rows = [{"example_id": f"e{i}", "cell_id": "big" if i < 900 else f"small{i % 3}"} for i in range(1000)]
    picked = stratified_sample(rows, 100)
    cells = [r["cell_id"] for r in picked]
    assert len(picked) == 100 and len({r["example_id"] for r in picked}) == 100
    assert cells.count("big") == 90 and all(cells.count(f"small{k}") in (3, 4) for k in range(3))
    assert stratified_sample(rows, 100) == picked  # deterministic
    assert stratified_sample(rows[:10], 100) == rows[:10]
    mean, low, high = mean_ci([0.0, 1.0] * 50)
    assert mean == 0.5 and low is not None and high is not None
    assert 0.39 < low < 0.41 and 0.59 < high < 0.61  # t(99) * 0.5025 / 10 ~ 0.0997
    assert mean_ci([0.7]) == (0.7, None, None)


# --------------------------------------------------------------------------------------- progress


def test_progress_reports_rate_tokens_dollars_and_eta(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    now = [0.0]
    progress = Progress(
        path, asset="raw_generations", domain="d", total=100, interval_s=0.0, clock=lambda: now[0]
    )
    progress.advance(10, resumed=True)  # served from an earlier run: says nothing about the pace
    for _ in range(20):
        now[0] += 0.5  # two new rows per second
        progress.advance(tokens=100, cost_usd=0.001)
    live = read_progress(path)
    assert live is not None and live.done == 30 and live.resumed == 10 and live.tokens == 2000
    assert live.cost_usd == pytest.approx(0.02)
    assert live.rows_per_s == pytest.approx(2.0) and live.eta_s == pytest.approx(35.0)  # 70 rows left
    line = live.line()
    assert "30/100 rows" in line and "2.0k tokens" in line and "$0.0200" in line and "ETA" in line
    done = progress.finish()
    assert done.finished and "ETA" not in done.line()


# ------------------------------------------------------------------------ adaptive concurrency live


class Reply(BaseModel):
    answer: str = Field(min_length=1, max_length=40)


def test_aimd_backs_off_on_429s_and_finishes_every_item(tmp_path: Path) -> None:
    from synth_pipelines.llm.client import LLMClient
    from synth_pipelines.llm.config import ModelConfig, ProviderProfile, Roles, WeightedModel
    from synth_pipelines.llm.factory import backend_for
    from synth_pipelines.spec.example_schema import json_schema_for_model
    from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan

    schema = json_schema_for_model(Reply)
    with FakeOpenAIServer(FaultPlan(latency_s=0.02, rate_429=0.2, retry_after_s=0.05)) as server:
        config = ModelConfig(kind="openai", base_url=server.base_url, model_id="m", max_concurrency=64)
        profile = ProviderProfile(
            name="aimd",
            models={"m": config},
            roles=Roles(generator=["m"], validators=[WeightedModel(model="m")], program="m"),
        )
        client = LLMClient(profile, {"m": backend_for("m", config, None)})

        async def one(i: int) -> bool:
            result = await client.astructured(
                ["m"], [ChatMessage(role="user", content=f"q{i}")], Reply, json_schema=schema
            )
            return result.ok

        results = client.pool(one, range(400), width=64)
        stats = client.gate_stats()["m"]
        faults = server.stats.faults.get("429", 0)
    assert all(results) and faults > 20
    assert stats["congestion_cuts"] >= 1 and stats["concurrency_limit"] < 64


# --------------------------------------------------------------------------------- ONNX embeddings


def test_an_unwritable_onnx_export_folder_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the export folder would go")
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(blocker))
    monkeypatch.setattr(embeddings, "_ENCODERS", {})
    with pytest.raises(embeddings.EmbedderUnavailable, match="SYNTH_CACHE_DIR") as caught:
        embeddings.embed_texts(["one text"], backend="onnx")
    assert str(blocker) in str(caught.value) and "backend to torch" in str(caught.value)


def test_onnx_batches_are_capped_by_texts_and_by_padded_tokens() -> None:
    lengths = [5, 256, 30, 256, 100, 7, 256, 31, 700]
    batches = embeddings.token_batches(lengths, batch_size=3, max_tokens=600)
    assert sorted(j for batch in batches for j in batch) == list(range(len(lengths)))  # each text once
    assert [[lengths[j] for j in batch] for batch in batches] == [
        [700],  # longer than the cap on its own: still a batch
        [256, 256],  # a third 256 would pad to 768 tokens
        [256, 100],
        [31, 30, 7],  # three texts: the batch_size cap
        [5],
    ]
    assert embeddings.token_batches([], 64, 2048) == []


def test_onnx_backends_match_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fp32 export is shared (the first test to need it makes it, on a fresh machine in the shared
    # cache); the int8 model and its verdict are made here, from scratch.
    _export_copy(tmp_path, monkeypatch)
    # Texts up to the 256-token limit and past it (truncated) fill several token-capped batches;
    # "[PAD]" typed in a text is a token like any other, not padding.
    long_texts = [" ".join(f"word{i}" for i in range(n)) for n in range(40, 300, 20)]
    texts = [
        *embeddings.PROBE_SENTENCES,
        "a short one",
        "x " * 400,
        "[PAD] [PAD] a text with pads",
        *long_texts,
    ]
    reference = embeddings.embed_texts(texts, backend="torch")
    onnx = embeddings.embed_texts(texts, backend="onnx")
    assert float(np.einsum("ij,ij->i", reference, onnx).min()) > 0.9999
    int8 = embeddings.embed_texts(texts, backend="onnx-int8")
    report = embeddings.backend_report(None, "onnx-int8")
    cosines = np.einsum("ij,ij->i", reference, int8)
    # The gate is honest either way: int8 serves only when it met the bar on its probe.
    assert report["serving"] == ("onnx-int8" if report["int8_ok"] else "onnx")
    assert report["int8_ok"] == (report["int8_min_cosine"] >= embeddings.INT8_MIN_COSINE)
    if report["int8_ok"]:
        assert float(cosines.min()) > 0.98
    folder = embeddings.export_dir(embeddings.bundled_model_dir())
    verdict = json.loads((folder / f"{embeddings.INT8_FILE}.verdict.json").read_text())
    assert verdict["int8_probe_texts"] >= len(embeddings.PROBE_SENTENCES)
    # Mixed precision: each layer's feed-forward output projection stays fp32, the rest is int8.
    import onnx

    kept = embeddings.fp32_layers(onnx.load(str(folder / "model.onnx")))
    assert len(kept) == 6  # MiniLM-L6: one per layer
    ops = {node.name: node.op_type for node in onnx.load(str(folder / embeddings.INT8_FILE)).graph.node}
    assert all(ops.get(name) == "MatMul" for name in kept)
    assert sum(op in ("MatMulInteger", "DynamicQuantizeMatMul") for op in ops.values()) >= 30


def _export_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SYNTH_CACHE_DIR holding a copy of the shared ONNX export: verdicts written here stay here."""
    import shutil

    model_dir = embeddings.bundled_model_dir()
    shared = embeddings.export_onnx(model_dir, embeddings.export_dir(model_dir))
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(embeddings, "_ENCODERS", {})
    folder = embeddings.export_dir(model_dir)
    folder.mkdir(parents=True)
    shutil.copy(shared, folder / "model.onnx")
    return folder


def test_openvino_serves_within_the_cosine_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _export_copy(tmp_path, monkeypatch)
    texts = [*embeddings.PROBE_SENTENCES, "a short one", "[PAD] typed", " ".join(f"w{i}" for i in range(300))]
    reference = embeddings.embed_texts(texts, backend="torch")
    served = embeddings.embed_texts(texts, backend="openvino")
    report = embeddings.backend_report(None, "openvino")
    assert report["serving"] == "openvino" and report["openvino_ok"]
    assert report["openvino_precision"] in ("bf16", "f32", "f16")  # what this CPU computes in
    assert report["openvino_min_cosine"] >= 0.999  # measured 0.99995 in bf16, 1.0 in f32
    assert float(np.einsum("ij,ij->i", reference, served).min()) > 0.999
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    if report["openvino_precision"] != "f32":  # really another precision, not fp32 under a new name
        assert not np.allclose(served, embeddings.embed_texts(texts, backend="onnx"), atol=1e-6)
    # Decided once per OpenVINO version, device and precision, and kept beside the export.
    [verdict_file] = folder.glob(f"openvino-{report['openvino_precision']}-*.verdict.json")
    assert json.loads(verdict_file.read_text())["openvino_probe_texts"] >= len(embeddings.PROBE_SENTENCES)


def test_openvino_below_the_cosine_bar_falls_back_to_onnx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _export_copy(tmp_path, monkeypatch)
    real_encode = embeddings.OpenVinoEncoder.encode

    def drifted(self, texts, batch_size):  # an OpenVINO that lost accuracy: every vector rotated
        return np.roll(real_encode(self, texts, batch_size), 1, axis=1)

    monkeypatch.setattr(embeddings.OpenVinoEncoder, "encode", drifted)
    texts = ["one text", "another, a little longer text"]
    served = embeddings.embed_texts(texts, backend="openvino")
    assert np.array_equal(served, embeddings.embed_texts(texts, backend="onnx"))  # onnx fp32 served
    report = embeddings.backend_report(None, "openvino")
    assert report["serving"] == "onnx" and report["openvino_ok"] is False
    assert report["openvino_min_cosine"] < 0.99 and "under 0.99" in report["openvino_reason"]
    # The failed verdict is remembered: a new process does not probe again, and does not serve it.
    monkeypatch.setattr(embeddings, "_ENCODERS", {})
    monkeypatch.setattr(embeddings.OpenVinoEncoder, "encode", real_encode)
    embeddings.embed_texts(texts, backend="openvino")
    assert embeddings.backend_report(None, "openvino")["serving"] == "onnx"
    assert len(list(folder.glob("openvino-*.verdict.json"))) == 1


def test_openvino_that_cannot_be_imported_falls_back_to_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(embeddings, "_ENCODERS", {})
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    texts = ["one text", "another, a little longer text"]
    served = embeddings.embed_texts(texts, backend="openvino")
    assert np.array_equal(served, embeddings.embed_texts(texts, backend="onnx"))
    report = embeddings.backend_report(None, "openvino")
    assert report["serving"] == "onnx" and "pip install openvino" in report["openvino_reason"]


def test_openvino_that_cannot_compile_falls_back_to_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "_ENCODERS", {})

    def cannot_compile(self, *args, **kwargs):  # as OpenVINO reports a CPU its plugin does not support
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\nthe CPU plugin needs SSE4.2")

    monkeypatch.setattr(embeddings.OpenVinoEncoder, "__init__", cannot_compile)
    texts = ["one text", "another, a little longer text"]
    served = embeddings.embed_texts(texts, backend="openvino")
    assert np.array_equal(served, embeddings.embed_texts(texts, backend="onnx"))
    report = embeddings.backend_report(None, "openvino")
    assert report["serving"] == "onnx"
    assert report["openvino_reason"] == (
        "OpenVINO could not compile the exported graph here: the CPU plugin needs SSE4.2"
    )


def test_openvino_whose_default_precision_cannot_compile_serves_f32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys

    folder = _export_copy(tmp_path, monkeypatch)
    # oneDNN capped at AVX2: OpenVINO still picks bf16 on this CPU and cannot compile it (seen on an
    # AMD EPYC with AVX512-BF16), or picks f32 by itself on a CPU without bf16. Either way f32 serves.
    code = (
        "import json, numpy as np\n"
        "from synth_pipelines.llm import embeddings as e\n"
        "texts = [*e.PROBE_SENTENCES, 'a short one']\n"
        "served = e.embed_texts(texts, backend='openvino')\n"
        "cos = float(np.einsum('ij,ij->i', served, e.embed_texts(texts, backend='torch')).min())\n"
        "print(json.dumps({**e.backend_report(None, 'openvino'), 'cos': cos}))\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "SYNTH_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["serving"] == "openvino" and report["openvino_precision"] == "f32"
    assert report["cos"] > 0.9999  # f32: the reference's own arithmetic
    if "openvino_note" in report:  # this CPU's default was a reduced precision that failed
        assert report["openvino_note"].startswith("its default precision did not compile here (")
    assert list(folder.glob("openvino-f32-*.verdict.json"))


def test_a_verdict_that_cannot_be_saved_holds_for_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    folder = _export_copy(tmp_path, monkeypatch)
    real_replace = os.replace

    def read_only_verdicts(src, dst):  # a cache folder that can be read but not written
        if str(dst).endswith(".verdict.json"):
            raise PermissionError(13, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", read_only_verdicts)
    embeddings.embed_texts(["one text", "another, a little longer text"], backend="openvino")
    report = embeddings.backend_report(None, "openvino")
    assert report["serving"] == "openvino" and report["openvino_ok"]
    assert "Permission denied" in report["verdict_not_saved"]
    assert not list(folder.glob("*verdict.json*"))  # neither the verdict nor a stray temporary file


def test_bf16_serves_only_with_amx_and_within_the_cosine_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "_BF16_VERDICTS", {})
    texts = [*embeddings.PROBE_SENTENCES, "a short one", " ".join(f"word{i}" for i in range(300))]
    reference = embeddings.embed_texts(texts, backend="torch")
    bf16 = embeddings.embed_texts(texts, backend="torch-bf16")
    report = embeddings.backend_report(None, "torch-bf16")
    # Whatever this machine is, the gate is honest: bf16 serves only with AMX and the cosine bar met.
    if embeddings.amx_unavailable_reason() is None:
        assert report["bf16_min_cosine"] >= 0.999  # measured 0.9999 on MiniLM
        assert report["serving"] == "torch-bf16" and report["bf16_ok"]
        assert not np.array_equal(bf16, reference)  # really a different precision
    else:
        assert report["serving"] == "torch" and "AMX" in report["bf16_reason"]
    assert float(np.einsum("ij,ij->i", reference, bf16).min()) > 0.999
    assert np.allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)


def test_bf16_falls_back_to_fp32_where_onednn_is_capped_below_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(embeddings, "_BF16_VERDICTS", {})
    # As if this CPU had AMX tiles, so the cap is what decides on any machine (an EPYC has none).
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in (embeddings.amx_unavailable_reason() or "")
    texts = ["one text", "another, a little longer text"]
    served = embeddings.embed_texts(texts, backend="torch-bf16")
    assert np.array_equal(served, embeddings.embed_texts(texts, backend="torch"))  # fp32 exactly
    report = embeddings.backend_report(None, "torch-bf16")
    assert report["serving"] == "torch" and report["bf16_ok"] is False


def test_bf16_below_the_cosine_bar_is_not_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "_BF16_VERDICTS", {})
    monkeypatch.setattr(embeddings, "amx_unavailable_reason", lambda: None)

    def drifted(texts, model_dir, batch_size):  # a bf16 that lost accuracy: every vector rotated
        vectors = embeddings._torch_embed(texts, model_dir, batch_size)
        return np.roll(vectors, 1, axis=1)

    monkeypatch.setattr(embeddings, "_bf16_embed", drifted)
    texts = ["one text", "another, a little longer text"]
    served = embeddings.embed_texts(texts, backend="torch-bf16")
    assert np.array_equal(served, embeddings.embed_texts(texts, backend="torch"))
    report = embeddings.backend_report(None, "torch-bf16")
    assert report["serving"] == "torch" and report["bf16_min_cosine"] < 0.99
    assert "under 0.99" in report["bf16_reason"]


def test_status_shows_what_is_running(tmp_path: Path) -> None:
    import os
    import time

    from typer.testing import CliRunner

    from synth_pipelines.cli import app
    from synth_pipelines.warehouse.progress import running
    from synth_pipelines.warehouse.storage import Warehouse

    wh = Warehouse(tmp_path / "wh")
    live = Progress(
        wh.progress_path("alpha"), asset="raw_generations", domain="alpha", total=50, interval_s=0
    )
    live.advance(5, tokens=300, cost_usd=0.01)
    done = Progress(
        wh.progress_path("beta"), asset="validated_examples", domain="beta", total=5, interval_s=0
    )
    done.advance(5)
    done.finish()
    stale = Progress(
        wh.progress_path("gamma"), asset="raw_generations", domain="gamma", total=9, interval_s=0
    )
    stale.advance(1)
    old = time.time() - 3600  # a run killed an hour ago stopped reporting
    snap = read_progress(wh.progress_path("gamma"))
    assert snap is not None
    wh.progress_path("gamma").write_text(snap.model_copy(update={"updated_at": old}).model_dump_json())
    assert [s.domain for s in running(wh.progress_path("x").parent)] == ["alpha"]
    result = CliRunner().invoke(app, ["status", "--warehouse", str(tmp_path / "wh")], env={**os.environ})
    assert result.exit_code == 0, result.output
    assert "in progress: alpha raw_generations: 5/50 rows" in result.output
    assert "beta" not in result.output and "gamma" not in result.output


def test_pool_limit_is_registered_once_and_never_overrides_a_hand_set_limit() -> None:
    import dagster as dg

    from synth_pipelines.resources.pools import ensure_pool_limit

    pools = {"concurrency": {"pools": {"granularity": "run", "default_limit": 1}}}
    with dg.instance_for_test(overrides=pools) as instance:
        storage = instance.event_log_storage
        assert "llm" not in storage.get_concurrency_keys()  # the window the daemon's queue misses
        assert ensure_pool_limit(instance, "llm") is True
        assert storage.get_concurrency_info("llm").slot_count == 1
        assert ensure_pool_limit(instance, "llm") is False  # known now: nothing written
        storage.set_concurrency_slots("other", 3)  # `dagster instance concurrency set other 3`
        assert ensure_pool_limit(instance, "other") is False
        assert storage.get_concurrency_info("other").slot_count == 3
    with dg.instance_for_test() as instance:  # no default limit: nothing to apply
        assert ensure_pool_limit(instance, "llm") is False
        assert "llm" not in instance.event_log_storage.get_concurrency_keys()
