"""Dagster resources: the warehouse, the model providers and the embedder. Bound once in definitions."""

from synth_pipelines.resources.embedder import EmbedderResource
from synth_pipelines.resources.llm import LLMResource
from synth_pipelines.resources.warehouse import WarehouseResource

__all__ = ["EmbedderResource", "LLMResource", "WarehouseResource"]
