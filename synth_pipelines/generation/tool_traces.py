"""Tool-call traces (``type: tool-use``) in three steps per planned item:

1. the generator writes the user's request and the tool calls that answer it (the *plan*, a
   bounded JSON schema: at most three calls, each one of the tools with that tool's own arguments
   schema, so a constrained decoder writes arguments of the right shape);
2. every call is checked against its tool's argument schema and run for real
   (``tooluse.tools.ToolSet.call``); a refused or failing call ends the trace as a failed row whose
   error names the call and why (``failure_kind`` ``tool_schema`` or ``tool_execution``);
3. the generator reads the real results and writes the final answer.

The row's ``example_json`` is the whole trace: ``request``, ``tool_calls`` (name, arguments,
result) and ``answer``, which the training exports turn into the OpenAI chat format with
``tool_calls`` and ``tool`` messages.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.types import ChatMessage, CompletionRequest, StructuredResult
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.tooluse.tools import CallOutcome, ToolSet

ANSWER_MAX_TOKENS = 400
ANSWER_SYSTEM = (
    "You answer a user's request using the results of the tool calls already made for it. Use the "
    "results as given; do not invent other numbers or facts."
)


class ToolAnswer(BaseModel):
    answer: str = Field(min_length=1, max_length=600)


@cache
def _plan_model(tool_names: tuple[str, ...]) -> type[BaseModel]:
    call = create_model(
        "ToolCall",
        name=(Literal[tool_names], ...),  # type: ignore[arg-type]
        arguments=(dict[str, Any], ...),
    )
    return create_model(
        "ToolPlan",
        request=(str, Field(min_length=10, max_length=300)),
        tool_calls=(list[call], Field(min_length=1, max_length=3)),
    )


def plan_model(spec: DomainSpec) -> type[BaseModel]:
    """What the generator's first reply is read into: the request and its calls. Each call's
    arguments are checked against its own tool's schema when it runs (``ToolSet.call``)."""
    return _plan_model(tuple(t.name for t in spec.tools))


def plan_schema(spec: DomainSpec) -> dict[str, Any]:
    """The JSON schema sent for the plan: each call is one of the tools, its ``arguments`` that
    tool's own parameters schema (so a constrained decoder writes valid arguments), every string
    and array bounded (a tiny model otherwise runs on forever)."""
    variants = [
        {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [t.name]}, "arguments": _bounded(t.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in spec.tools
    ]
    return {
        "title": "ToolPlan",
        "type": "object",
        "properties": {
            "request": {"type": "string", "minLength": 10, "maxLength": 300},
            "tool_calls": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"anyOf": variants}},
        },
        "required": ["request", "tool_calls"],
        "additionalProperties": False,
    }


def _bounded(schema: Any) -> Any:
    """``schema`` with a maxLength on every string and a maxItems on every array that lacks one."""
    if isinstance(schema, list):
        return [_bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _bounded(v) for k, v in schema.items()}
    if out.get("type") == "string":
        out.setdefault("maxLength", 300)
    if out.get("type") == "array":
        out.setdefault("maxItems", 10)
    return out


def plan_guide(spec: DomainSpec) -> str:
    """The field guide of the plan prompt: what to write, and the tools with their arguments."""
    tools = "\n".join(
        f"- {t.name}: {t.description} Arguments: {json.dumps(t.parameters, sort_keys=True)}"
        for t in spec.tools
    )
    return (
        "- request: what a user asks, which these tools can answer (one or two sentences)\n"
        "- tool_calls: one to three calls that answer it; each has name (one of the tools) and "
        "arguments (matching the tool's arguments)\n"
        f"Tools:\n{tools}"
    )


@dataclass
class Trace:
    """A finished trace, or the reason there is none (and the answer call, when one was made)."""

    example: dict[str, Any] | None = None
    error: str | None = None
    failure_kind: str | None = None
    answer_result: StructuredResult[Any] | None = None


def answer_request(
    model: str, request: str, calls: list[CallOutcome], temperature: float, seed: int
) -> CompletionRequest:
    results = "\n".join(
        f"{k}. {c.name}({c.arguments}) returned: {c.result}" for k, c in enumerate(calls, start=1)
    )
    return CompletionRequest(
        model=model,
        messages=(
            ChatMessage(role="system", content=ANSWER_SYSTEM),
            ChatMessage(
                role="user",
                content=f"Request: {request}\nTool calls and their results:\n{results}\nWrite the answer.",
            ),
        ),
        json_schema=ToolAnswer.model_json_schema(),
        temperature=temperature,
        max_tokens=ANSWER_MAX_TOKENS,
        seed=seed,
    )


async def finish_trace(
    plan: BaseModel, tools: ToolSet, client: LLMClient, chain: list[str], *, temperature: float, seed: int
) -> Trace:
    """Run the plan's calls for real, then ask for the answer that uses their results."""
    written = plan.model_dump()
    request = str(written["request"])
    calls: list[CallOutcome] = []
    for k, call in enumerate(written["tool_calls"], start=1):
        # In a worker thread: a call is a subprocess, and the event loop serves other items meanwhile.
        arguments = json.dumps(call["arguments"], ensure_ascii=False)
        outcome = await asyncio.to_thread(tools.call, call["name"], arguments)
        if outcome.error is not None:
            verb = "refused" if outcome.kind == "schema" else "failed"
            return Trace(
                error=f"tool call {k} ({outcome.name}) {verb}: {outcome.error}",
                failure_kind=f"tool_{outcome.kind}",
            )
        calls.append(outcome)
    result = await client.astructured_request(
        chain, answer_request(chain[0], request, calls, temperature, seed), ToolAnswer
    )
    if not result.ok or result.value is None:
        return Trace(
            error=f"final answer: {result.error}", failure_kind=result.failure_kind, answer_result=result
        )
    example = {
        "request": request,
        "tool_calls": [{"name": c.name, "arguments": c.arguments, "result": c.result} for c in calls],
        "answer": str(result.value.model_dump()["answer"]),
    }
    return Trace(example=example, answer_result=result)
