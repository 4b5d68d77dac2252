"""A small OpenAI-compatible server (``POST /v1/chat/completions``) with fault injection.

Used by the tests and ``make bench-llm``; it listens on 127.0.0.1 only. Replies are JSON values
that satisfy the request's ``response_format`` schema, so the whole graph can run against it.
Faults are injected by a deterministic per-request schedule: latency, 429 with ``Retry-After``,
500, a hang past the client's timeout, and broken JSON. ``die_after`` makes the server crash after
that many requests: it resets every connection and stops listening, as a killed process does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from synth_pipelines.testing.schema_values import instance_from_schema


@dataclass
class FaultPlan:
    """What the server does. Rates are fractions of requests; ``first_n_*`` hit the first requests."""

    latency_s: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 0.05
    rate_500: float = 0.0
    rate_hang: float = 0.0
    hang_s: float = 30.0
    rate_broken_json: float = 0.0
    first_n_429: int = 0
    first_n_500: int = 0
    first_n_broken: int = 0
    first_n_hang: int = 0
    die_after: int | None = None
    seed: int = 0
    # Structured-output modes this server does not support: it answers them the way real servers
    # do (llama-cpp-python: a 500 wrapping "Input should be 'text' or 'json_object'"; others a 400).
    reject_modes: frozenset[str] = frozenset()
    # What a 500 says (the server's own explanation is what a user needs to see).
    error_message: str = "internal error"
    # Model ids the server serves; others get a 404 as from OpenAI. None: any id.
    known_models: frozenset[str] | None = None
    # A provider's requests-per-minute quota, as providers enforce one: a token bucket holding
    # ``rpm_limit`` (+ ``rpm_slack`` for network jitter), refilled at rpm_limit/60 per second. A
    # request that finds it empty is answered 429 and counted as fault ``rpm_exceeded``.
    rpm_limit: int | None = None
    rpm_slack: float = 2.0


@dataclass
class ServerStats:
    requests: int = 0
    ok: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    auth_headers: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)  # the structured-output mode of each request

    def fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1


# Where a prompt carries its schema: the text after this cue is a JSON Schema (the project's prompt
# mode writes "... must match this JSON Schema:\n{...}"; the server only knows the cue).
PROMPT_MARKER = "JSON Schema:"


def request_mode(body: dict[str, Any]) -> str:
    """How a request carries its schema: json_schema, json_object, tools, prompt, or none."""
    rf = body.get("response_format") or {}
    if rf.get("type") in ("json_schema", "json_object"):
        return str(rf["type"])
    if body.get("tools"):
        return "tools"
    if any(PROMPT_MARKER in str(m.get("content", "")) for m in body.get("messages") or []):
        return "prompt"
    return "none"


def _schema_in_messages(body: dict[str, Any]) -> dict[str, Any] | None:
    for message in body.get("messages") or []:
        content = str(message.get("content", ""))
        if PROMPT_MARKER in content:
            text = content.split(PROMPT_MARKER, 1)[1].strip()
            value, _ = json.JSONDecoder().raw_decode(text)
            return value if isinstance(value, dict) else None
    return None


def _schema_from_request(body: dict[str, Any]) -> dict[str, Any] | None:
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return (rf.get("json_schema") or {}).get("schema")
    if rf.get("type") == "json_object":
        return rf.get("schema") or _schema_in_messages(body)
    tools = body.get("tools") or []
    if tools:  # tool mode
        return tools[0].get("function", {}).get("parameters")
    return _schema_in_messages(body)


_REJECTIONS: dict[str, tuple[int, str]] = {
    "json_schema": (
        500,
        "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
        "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}",
    ),
    "json_object": (400, "response_format of type 'json_object' is not supported by this model"),
    "tools": (400, "this model does not support tools / function calling"),
}


class FakeOpenAIServer:
    """Run with ``with FakeOpenAIServer(plan) as server: ... server.base_url``."""

    def __init__(self, plan: FaultPlan | None = None, *, port: int = 0):
        self.plan = plan or FaultPlan()
        self.stats = ServerStats()
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._site: web.SockSite | None = None
        self.dead = threading.Event()
        self.port = 0
        self._quota = (float(self.plan.rpm_limit or 0) + self.plan.rpm_slack, time.monotonic())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ fault schedule
    def _decide(self, n: int) -> str | None:
        p = self.plan
        if n <= p.first_n_429:
            return "429"
        if n <= p.first_n_500:
            return "500"
        if n <= p.first_n_broken:
            return "broken_json"
        if n <= p.first_n_hang:
            return "hang"
        r = random.Random(f"{p.seed}:{n}").random()
        for kind, rate in (
            ("429", p.rate_429),
            ("500", p.rate_500),
            ("hang", p.rate_hang),
            ("broken_json", p.rate_broken_json),
        ):
            if r < rate:
                return kind
            r -= rate
        return None

    def _within_quota(self) -> bool:
        """Take one request from the RPM bucket (call with the lock held)."""
        limit = self.plan.rpm_limit
        if limit is None:
            return True
        tokens, updated = self._quota
        now = time.monotonic()
        tokens = min(limit + self.plan.rpm_slack, tokens + (now - updated) * limit / 60.0)
        self._quota = (tokens - 1 if tokens >= 1 else tokens, now)
        return tokens >= 1

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            within_quota = self._within_quota()
            self.stats.requests += 1
            n = self.stats.requests
            self.stats.auth_headers.append(request.headers.get("Authorization", ""))
            self.stats.models.append(str(body.get("model")))
            mode = request_mode(body)
            self.stats.modes.append(mode)
        if self.plan.die_after is not None and n > self.plan.die_after:
            await self._crash()
            assert request.transport is not None
            request.transport.abort()  # connection reset, as from a killed process
            raise ConnectionResetError("the fake server has crashed")
        model = str(body.get("model"))
        if self.plan.known_models is not None and model not in self.plan.known_models:
            self.stats.fault("404")
            error = {"message": f"The model `{model}` does not exist", "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=404)
        if mode in self.plan.reject_modes and mode in _REJECTIONS:
            self.stats.fault(f"rejected_{mode}")
            status, explanation = _REJECTIONS[mode]
            error = {"message": explanation, "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=status)
        if not within_quota:
            self.stats.fault("rpm_exceeded")
            error = {"message": "requests per minute exceeded", "type": "rate_limit"}
            return web.json_response({"error": error}, status=429, headers={"Retry-After": "1"})
        fault = self._decide(n)
        if self.plan.latency_s:
            await asyncio.sleep(self.plan.latency_s)
        if fault == "429":
            self.stats.fault("429")
            return web.json_response(
                {"error": {"message": "rate limited", "type": "rate_limit"}},
                status=429,
                headers={"Retry-After": str(self.plan.retry_after_s)},
            )
        if fault == "500":
            self.stats.fault("500")
            return web.json_response({"error": {"message": self.plan.error_message}}, status=500)
        if fault == "hang":
            self.stats.fault("hang")
            await asyncio.sleep(self.plan.hang_s)
        schema = _schema_from_request(body)
        digest = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()
        rng = random.Random(f"{digest}:{body.get('seed')}")
        content = json.dumps(instance_from_schema(schema, rng)) if schema else "ok"
        if fault == "broken_json":
            self.stats.fault("broken_json")
            content = content[: max(1, len(content) // 2)]
        elif mode == "prompt":  # nothing enforces the format: chatter around the object, as models do
            content = f"Sure! Here it is:\n```json\n{content}\n```\nAnything else? {{}}"
        self.stats.ok += 1
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": content}}
                ],
            }
        return web.json_response(
            {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": 20,
                    "completion_tokens": max(1, len(content) // 4),
                    "total_tokens": 20 + max(1, len(content) // 4),
                },
            }
        )

    async def _crash(self) -> None:
        if self.dead.is_set() or self._site is None:
            return
        self.dead.set()
        await self._site.stop()  # the listening socket closes: new connections are refused
        if self._runner is not None and self._runner.server is not None:
            for handler in list(self._runner.server.connections):
                if handler.transport is not None:
                    handler.transport.abort()

    # ------------------------------------------------------------------ lifecycle
    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))  # loopback only
        self.port = sock.getsockname()[1]
        site = web.SockSite(runner, sock, backlog=1024)
        loop.run_until_complete(site.start())
        self._site = site
        self._runner = runner
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._serve, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground (used by the benchmark to keep the server off the client's GIL)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(FaultPlan(latency_s=args.latency), port=args.port).start()
    print(server.port, flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        server.stop()


if __name__ == "__main__":
    main()
