"""The response cache and the RPM/TPM buckets in Redis, for workers on several machines.

On one machine both live in SQLite files in the state folder (``llm/cache.py``, ``llm/limits.py``),
which every process there shares. SQLite's locking does not hold over a network filesystem, so
workers on different machines point ``SYNTH_SHARED_STATE`` at one Redis server instead
(``redis://host:6379/0``): the same interfaces, the same semantics.

* :class:`RedisResponseCache`: one string per reply (``synth:resp:<key>``, set once: the first
  reply for a key wins, as with SQLite's primary key) plus an append-only list of the keys, whose
  index plays the role of SQLite's rowid for :class:`~synth_pipelines.llm.cache.KeyFilter`.
* :class:`RedisBuckets`: the token-bucket reservation of ``limits._reserve`` as one Lua script,
  atomic on the server and timed by the server's clock, so workers whose clocks drift still share
  one quota. (The ``limits`` library's Redis windows are test-and-hit counters with no reservation,
  so callers would poll; pyrate-limiter's Redis bucket stores one entry per unit of weight, which a
  tokens-per-minute limit makes unusable.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from synth_pipelines.llm.types import RawCompletion

PREFIX = "synth:"
_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()


def is_redis_url(location: object) -> bool:
    return isinstance(location, str) and location.startswith(("redis://", "rediss://", "unix://"))


def redacted(url: str) -> str:
    """``url`` without its password (``redis://:secret@host`` is how Redis URLs carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


def redis_client(url: str) -> Any:
    """One pooled client per URL and process (redis-py's clients are thread-safe)."""
    with _LOCK:
        client = _CLIENTS.get(url)
        if client is None:
            try:
                import redis
            except ImportError as e:  # pragma: no cover - the `distributed` extra is not installed
                raise RuntimeError(
                    f"shared state {redacted(url)!r} needs the redis package: "
                    "pip install 'synth-pipelines[distributed]'"
                ) from e
            client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10)
            _CLIENTS[url] = client
        return client


def check_reachable(url: str) -> None:
    """Raise a one-line error naming the URL when the Redis server does not answer."""
    import redis

    try:
        redis_client(url).ping()
    except redis.RedisError as e:
        raise RuntimeError(
            f"shared state {redacted(url)!r} (SYNTH_SHARED_STATE) does not answer: {e}. "
            "Start the Redis server, or unset SYNTH_SHARED_STATE to keep the cache and the rate "
            "limits in the state folder."
        ) from None


class RedisResponseCache:
    """The response cache in Redis: ``get``/``put`` raw completions by request key, in batches."""

    READ_BATCH = 500

    def __init__(self, url: str, *, namespace: str = "resp"):
        self.url = url
        self._redis = redis_client(url)
        self._prefix = f"{PREFIX}{namespace}:"
        self._log = f"{PREFIX}{namespace}-log"

    @property
    def location(self) -> str:
        return f"{self.url}#{self._prefix}"

    def get(self, key: str) -> RawCompletion | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: list[str]) -> dict[str, RawCompletion]:
        found: dict[str, RawCompletion] = {}
        for start in range(0, len(keys), self.READ_BATCH):
            chunk = keys[start : start + self.READ_BATCH]
            for key, body in zip(chunk, self._redis.mget([self._prefix + k for k in chunk]), strict=True):
                if body is not None:
                    found[key] = RawCompletion.from_json(body)
        return found

    def put(self, key: str, model: str, completion: RawCompletion) -> None:
        self.put_many([(key, model, completion)])

    def put_many(self, rows: Iterable[tuple[str, str, RawCompletion]]) -> None:
        rows = list(rows)
        if not rows:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, _model, completion in rows:
            pipe.set(self._prefix + key, orjson.dumps(completion), nx=True)
        written = [key for (key, _, _), ok in zip(rows, pipe.execute(), strict=True) if ok]
        if written:
            self._redis.rpush(self._log, *written)

    def keys_since(self, rowid: int) -> list[tuple[int, str]]:
        """(position, key) of every key written after position ``rowid`` (1-based, as SQLite's)."""
        keys = self._redis.lrange(self._log, rowid, -1)
        return [(rowid + i + 1, k.decode()) for i, k in enumerate(keys)]

    def __len__(self) -> int:
        return int(self._redis.llen(self._log))


# KEYS[1]: the bucket; ARGV: units, per_minute. Returns the seconds to wait, as a string (Redis
# truncates Lua numbers to integers). Mirrors limits._reserve, with the server's clock.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local units, per_minute = tonumber(ARGV[1]), tonumber(ARGV[2])
local rate = per_minute / 60.0
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens, updated = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, updated = per_minute, now end
tokens = math.min(per_minute, tokens + math.max(0, now - updated) * rate)
tokens = tokens - math.min(units, per_minute)
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(math.max(now, updated)))
redis.call('EXPIRE', KEYS[1], 3600)
return tostring(math.max(0, -tokens / rate))
"""


class RedisBuckets:
    """RPM/TPM bucket state in Redis, shared by every worker that points at the server."""

    def __init__(self, url: str):
        self.url = url
        self._redis = redis_client(url)
        self._script = self._redis.register_script(_RESERVE)

    def reserve(self, key: str, units: float, per_minute: float) -> float:
        return float(self._script(keys=[f"{PREFIX}bucket:{key}"], args=[units, per_minute]))
