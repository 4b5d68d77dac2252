"""DSPy's language model, routed through the project's own provider layer.

DSPy sees an ordinary ``dspy.BaseLM``; every call it makes goes through :class:`LLMClient`, so it
is cached, retried, accounted and constrained by the same bounded JSON schema as every other call.
"""

from __future__ import annotations

import os

# DSPy imports litellm, which otherwise fetches a model price map over the network at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DSPY_CACHEDIR", os.path.join(os.path.expanduser("~"), ".cache", "synth_dspy"))

from types import SimpleNamespace
from typing import Any

import dspy
from pydantic import BaseModel

from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.types import ChatMessage, CompletionRequest
from synth_pipelines.spec.example_schema import DEFAULT_MAX_ITEMS, DEFAULT_MAX_STRING


def bound_schema(schema: dict[str, Any], field_schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Give every property a bound: the spec's own schema for known fields, defaults for anything else."""

    def bound(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        node = {
            k: bound(v) if k in ("items", "properties") or isinstance(v, dict) else v
            for k, v in node.items()
            if k not in ("title", "$defs")
        }
        if "properties" in node:
            node["properties"] = {k: bound(v) for k, v in node["properties"].items()}
        if node.get("type") == "string" and "enum" not in node:
            node.setdefault("maxLength", DEFAULT_MAX_STRING)
        if node.get("type") == "array":
            node.setdefault("maxItems", DEFAULT_MAX_ITEMS)
        return node

    out = bound(schema)
    props = out.get("properties", {})
    for name in list(props):
        if name in field_schemas:
            props[name] = field_schemas[name]
    return out


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content: keep the text parts
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


class ProviderLM(dspy.BaseLM):
    """A ``dspy.BaseLM`` whose ``forward`` calls :meth:`LLMClient.complete` on one configured model."""

    # Read by DSPy's JSONAdapter: we take a response schema and enforce it with the provider's
    # structured output (llama.cpp grammar or OpenAI ``json_schema``).
    supported_params = frozenset({"response_format", "temperature", "max_tokens", "seed"})
    supports_response_schema = True

    def __init__(
        self,
        client: LLMClient,
        model: str,
        *,
        field_schemas: dict[str, dict[str, Any]],
        output_fields: list[str],
        temperature: float = 0.0,
        max_tokens: int = 384,
    ):
        super().__init__(
            model=f"synth/{model}",
            model_type="chat",
            temperature=temperature,
            max_tokens=max_tokens,
            cache=False,
        )
        self.client = client
        self.provider_model = model
        self.field_schemas = field_schemas
        self.output_fields = output_fields
        self.calls = 0

    def _schema_for(self, response_format: Any) -> dict[str, Any]:
        if isinstance(response_format, type) and issubclass(response_format, BaseModel):
            return bound_schema(response_format.model_json_schema(), self.field_schemas)
        # JSON mode without a schema: build one from the signature's outputs so tiny models stay bounded.
        return {
            "type": "object",
            "properties": {f: self.field_schemas[f] for f in self.output_fields},
            "required": list(self.output_fields),
            "additionalProperties": False,
        }

    def forward(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> Any:
        merged = {**self.kwargs, **kwargs}
        msgs = messages or [{"role": "user", "content": prompt or ""}]
        request = CompletionRequest(
            model=self.provider_model,
            messages=tuple(
                ChatMessage(role=m.get("role", "user"), content=_content_text(m.get("content"))) for m in msgs
            ),
            json_schema=self._schema_for(merged.get("response_format")),
            temperature=float(merged.get("temperature") or 0.0),
            max_tokens=int(merged.get("max_tokens") or 384),
            seed=int(merged.get("seed") or 0),
        )
        raw, record = self.client.complete(request)
        self.client._record(record, failed=False)
        self.calls += 1
        usage = SimpleNamespace(
            prompt_tokens=raw.prompt_tokens,
            completion_tokens=raw.completion_tokens,
            total_tokens=raw.prompt_tokens + raw.completion_tokens,
        )
        usage_dict = vars(usage)
        choice = SimpleNamespace(
            message=SimpleNamespace(content=raw.text, tool_calls=None),
            finish_reason=raw.finish_reason,
            logprobs=None,
        )
        return _Response(choices=[choice], usage=usage_dict, model=self.provider_model)


class _Response(SimpleNamespace):
    """OpenAI chat-completion shaped response (DSPy reads .choices, .usage via dict(), .model)."""
