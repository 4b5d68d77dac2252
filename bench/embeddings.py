"""``make bench-embed``: texts per second of each embedding backend next to sentence-transformers.

The texts are the examples of the last ``make demo`` (``warehouse/validated_examples``) when there
are any, plus texts made from the shipped specs (their hint examples and seed problems with each
matrix condition), repeated to ``--texts``. Every backend embeds the same texts in the same run;
the figures are ratios to torch (sentence-transformers) measured right before. For the ONNX
backends the cosine to torch is reported, and whether int8 meets the 0.99 bar that gates it.

Then long texts, each backend in a fresh process so its peak memory (``VmHWM``) is its own:
chunks of real source code (this Python's standard library, about 1,500 characters each, most at
the 256-token limit), the length of the code and logs users embed; the ONNX backend once with its
token cap per batch and once without (``MAX_BATCH_TOKENS`` unbounded: 64 texts per batch).

The last lines are ``embed_speedup_best=<fastest backend's texts/s / torch's>``,
``embed_long_onnx_speed_vs_torch=``, ``embed_long_onnx_peak_vs_torch=`` and
``embed_long_bf16_speed_vs_torch=``, ``embed_long_int8_speed_vs_torch=``,
``embed_long_openvino_speed_vs_torch=``, ``embed_int8_min_cosine_varied=`` and
``embed_openvino_min_cosine_varied=``: the int8 graph's and OpenVINO's worst cosine to torch on
human-written text of kinds the gates' probe does not hold (code, Debian copyright files,
configuration files; the table before the long texts shows each kind). ``torch-bf16`` serves bf16
only on CPUs with AMX tiles (its report line says which); elsewhere its row is torch fp32 again.
``openvino`` computes in bf16 on CPUs with AVX512-BF16 or AMX and in fp32 elsewhere (its report
line says which).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from synth_pipelines.llm.embeddings import (
    INT8_MIN_COSINE,
    OnnxEncoder,
    OpenVinoEncoder,
    backend_report,
    bundled_model_dir,
    embed_texts,
    export_dir,
    quantize_int8,
)
from synth_pipelines.spec.text import example_text

REPO = Path(__file__).resolve().parent.parent


def demo_texts() -> list[str]:
    texts: list[str] = []
    warehouse = REPO / "warehouse" / "validated_examples"
    if warehouse.is_dir():
        import duckdb

        rows = duckdb.sql(f"select example_json from read_parquet('{warehouse}/*/*.parquet')").fetchall()
        texts += [example_text(json.loads(r[0])) for r in rows]
    for path in sorted((REPO / "schemas").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        texts += [example_text(e) for e in spec.get("hints", {}).get("examples", [])]
        dims = spec.get("matrix", {}).get("dimensions", {})
        for problem in spec.get("seed_problems", []):
            for combo in itertools.product(*dims.values()):
                texts.append(f"{problem} ({', '.join(map(str, combo))})")
    return texts


def long_texts(n: int) -> list[str]:
    """``n`` chunks of about 1,500 characters of the standard library's own source: human-written code."""
    chunks: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        chunks += [source[i : i + 1500] for i in range(0, len(source) - 1500, 1500)]
        if len(chunks) >= n:
            break
    return chunks[:n]


def varied_texts(per_kind: int = 150) -> dict[str, list[str]]:
    """Human-written text of kinds the probe sentences are not, from this machine, by kind: code (the
    standard library from its middle on, not the files ``long_texts`` reads first), Debian's
    copyright files (names, addresses, licence prose) and configuration files. A kind this machine
    lacks is left out."""
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    sources = {
        "code": stdlib[len(stdlib) // 2 :],
        "copyright": sorted(Path("/usr/share/doc").glob("*/copyright")),
        "config": sorted(Path("/etc").glob("**/*.conf")),
    }
    kinds: dict[str, list[str]] = {}
    for kind, paths in sources.items():
        chunks: list[str] = []
        for path in paths:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:  # unreadable to this user: skipped
                continue
            chunks += [
                text[i : i + 600] for i in range(0, min(len(text), 6000), 600) if text[i : i + 600].strip()
            ]
            if len(chunks) >= 4 * per_kind:
                break
        if chunks:
            kinds[kind] = chunks[:: max(1, len(chunks) // per_kind)][:per_kind]
    return kinds


def varied_text_table() -> None:
    """Cosine to torch, by kind of text, of the ONNX graphs themselves (fp32, int8 ungated, and
    OpenVINO at this CPU's default precision, ungated)."""
    kinds = varied_texts()
    sizes = ", ".join(f"{kind} {len(texts)}" for kind, texts in kinds.items())
    print(f"\ncosine to torch on human-written text the probe does not hold ({sizes})")
    model_dir = bundled_model_dir()
    fp32 = export_dir(model_dir) / "model.onnx"
    graphs = {
        "onnx": OnnxEncoder(fp32, model_dir),
        "onnx-int8 graph": OnnxEncoder(quantize_int8(fp32), model_dir),
        "openvino": OpenVinoEncoder(fp32, model_dir),
    }
    worst: dict[str, float] = {}
    for kind, texts in kinds.items():
        reference = embed_texts(texts, backend="torch")
        for name, encoder in graphs.items():
            cos = np.einsum("ij,ij->i", encoder.encode(texts, 64), reference)
            worst[name] = min(worst.get(name, 1.0), float(cos.min()))
            print(
                f"  {kind:<10} {name:<16} min {cos.min():.4f}  1st percentile "
                f"{np.percentile(cos, 1):.4f}  mean {cos.mean():.4f}"
            )
    print(f"embed_int8_min_cosine_varied={worst['onnx-int8 graph']:.4f}")
    print(f"embed_openvino_min_cosine_varied={worst['openvino']:.4f}")


def child(backend: str, uncapped: bool, count: int) -> None:
    """One backend on the long texts in this (fresh) process: prints texts/s and peak RSS as JSON."""
    from synth_pipelines.llm import embeddings

    if uncapped:
        embeddings.MAX_BATCH_TOKENS = 10**9
    texts = long_texts(count)
    _, rate = timed_embed(texts, backend)
    # VmHWM, not ru_maxrss: Linux carries the parent's peak across fork and exec into ru_maxrss.
    status = Path("/proc/self/status").read_text()
    peak_mb = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) / 1024
    print(json.dumps({"rate": rate, "peak_mb": peak_mb}))


def long_text_table(count: int) -> None:
    print(f"\n{count} long texts (stdlib source, 1,500 characters each), each backend in a fresh process")
    results = {}
    for name, backend, uncapped in (
        ("torch (sentence-transformers)", "torch", False),
        ("onnx (token-capped batches)", "onnx", False),
        ("onnx, 64 texts per batch", "onnx", True),
        ("onnx-int8", "onnx-int8", False),
        ("torch-bf16", "torch-bf16", False),
        ("openvino", "openvino", False),
    ):
        argv = [sys.executable, "-m", "bench.embeddings", "--child", backend, "--texts", str(count)]
        out = subprocess.run(
            [*argv, *(["--uncapped"] if uncapped else [])], capture_output=True, text=True, check=True
        ).stdout
        results[name] = result = json.loads(out.strip().splitlines()[-1])
        print(f"{name:<30} {result['rate']:7.1f} texts/s  peak {result['peak_mb']:6.0f} MB")
    torch, onnx = results["torch (sentence-transformers)"], results["onnx (token-capped batches)"]
    print(f"embed_long_onnx_speed_vs_torch={onnx['rate'] / torch['rate']:.2f}")
    print(f"embed_long_onnx_peak_vs_torch={onnx['peak_mb'] / torch['peak_mb']:.2f}")
    print(f"embed_long_bf16_speed_vs_torch={results['torch-bf16']['rate'] / torch['rate']:.2f}")
    print(f"embed_long_int8_speed_vs_torch={results['onnx-int8']['rate'] / torch['rate']:.2f}")
    print(f"embed_long_openvino_speed_vs_torch={results['openvino']['rate'] / torch['rate']:.2f}")


def timed_embed(texts: list[str], backend: str) -> tuple[np.ndarray, float]:
    embed_texts(texts[:32], backend=backend)  # load (and for ONNX export/quantize) outside the timing
    started = time.perf_counter()
    vectors = embed_texts(texts, backend=backend)
    return vectors, len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--long-texts", type=int, default=1000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--uncapped", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.uncapped, args.texts)
        return
    base = demo_texts()
    texts = list(itertools.islice(itertools.cycle(base), args.texts))
    # A fresh export folder: the int8 verdict is taken on these texts, not remembered from elsewhere.
    os.environ["SYNTH_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-embed-")
    words = sum(len(t.split()) for t in texts) / len(texts)
    print(f"{len(texts)} texts ({len(base)} distinct, {words:.0f} words on average), {os.cpu_count()} cores")
    reference, torch_rate = timed_embed(texts, "torch")
    print(f"torch (sentence-transformers)  {torch_rate:7.1f} texts/s  1.00x")
    best = 1.0
    for backend in ("onnx", "onnx-int8", "torch-bf16", "openvino"):
        vectors, rate = timed_embed(texts, backend)
        report = backend_report(None, backend)  # type: ignore[arg-type]
        cos = np.einsum("ij,ij->i", vectors, reference)
        best = max(best, rate / torch_rate)
        print(
            f"{backend:<30} {rate:7.1f} texts/s  {rate / torch_rate:.2f}x  serving {report['serving']}; "
            f"cosine to torch min {cos.min():.4f} mean {cos.mean():.4f}"
        )
        if backend == "onnx-int8":
            verdict = "meets" if report.get("int8_ok") else "misses"
            print(
                f"  int8 weights {verdict} the bar (min cosine {report.get('int8_min_cosine')} on "
                f"{report.get('int8_probe_texts')} probe texts, required {INT8_MIN_COSINE})"
            )
            # What the int8 graph itself does on these texts, gated or not.
            model_dir = bundled_model_dir()
            encoder = OnnxEncoder(quantize_int8(export_dir(model_dir) / "model.onnx"), model_dir)
            encoder.encode(texts[:32], 64)
            started = time.perf_counter()
            raw = encoder.encode(texts, 64)
            rate = len(texts) / (time.perf_counter() - started)
            cos = np.einsum("ij,ij->i", raw, reference)
            print(
                f"  the int8 graph itself: {rate:.1f} texts/s ({rate / torch_rate:.2f}x), cosine to torch "
                f"min {cos.min():.4f} mean {cos.mean():.4f}"
            )
        if backend == "torch-bf16":
            print(f"  {report.get('bf16_reason') or 'AMX tiles present, cosine bar met: serves bf16'}")
        if backend == "openvino":
            print(
                f"  OpenVINO {report.get('openvino_version')} computes in {report.get('openvino_precision')} "
                f"on {report.get('openvino_device')}; min cosine {report.get('openvino_min_cosine')} on "
                f"{report.get('openvino_probe_texts')} probe texts"
                + (f" ({report['openvino_reason']})" if report.get("openvino_reason") else "")
            )
    # The thread layout: the same fp32 graph on one single-threaded session instead of one per core.
    model_dir = bundled_model_dir()
    single = OnnxEncoder(export_dir(model_dir) / "model.onnx", model_dir, workers=1)
    single.encode(texts[:32], 64)
    started = time.perf_counter()
    single.encode(texts, 64)
    rate = len(texts) / (time.perf_counter() - started)
    print(f"{'onnx, one session (1 thread)':<30} {rate:7.1f} texts/s  {rate / torch_rate:.2f}x")
    print(f"embed_speedup_best={best:.2f}")
    varied_text_table()
    long_text_table(args.long_texts)


if __name__ == "__main__":
    main()
