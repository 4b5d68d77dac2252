"""Who may talk to the service, shared by the REST API and the MCP server over HTTP: the bearer token
rule, the ``Host`` names a server answers to (DNS-rebinding protection), and request errors worded
for the caller.

The threat model (docs/service.md says the same): without ``SYNTH_API_TOKEN`` a server binds to a
loopback address only, so only programs on this machine reach it, and it answers only to loopback
``Host`` names, so a web page cannot reach it through a name it points at 127.0.0.1. Off loopback a
token is required on every call. A spec may execute code only through ``program.module``, a file
inside the specs folder.
"""

from __future__ import annotations

import hmac
import os
import re
from typing import Any

import numpy as np

from synth_pipelines.service.models import BadInput

TOKEN_ENV = "SYNTH_API_TOKEN"
ALLOWED_HOSTS_ENV = "SYNTH_ALLOWED_HOSTS"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def require_token_off_loopback(host: str, token: str | None) -> str | None:
    """The token in force (``token``, else ``SYNTH_API_TOKEN``), or a ServiceError when a server
    without one would listen beyond loopback."""
    secret = token if token is not None else os.environ.get(TOKEN_ENV) or None
    if secret is None and host not in LOOPBACK:
        raise BadInput(
            f"refusing to serve on {host} without a token: set {TOKEN_ENV} (clients send "
            "'Authorization: Bearer <token>'), or bind to 127.0.0.1"
        )
    return secret


def token_matches(secret: str | None, presented: str | None) -> bool:
    """Whether a caller presenting ``presented`` may use a server whose token is ``secret`` (no
    token: a loopback-only server, which serves every local caller). Constant-time."""
    if secret is None:
        return True
    return presented is not None and hmac.compare_digest(presented.encode(), secret.encode())


def bearer_of(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port, lower case (``[::1]:8000`` -> ``::1``)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def json_depth(body: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text (strings skipped), without parsing it."""
    stripped = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", body)
    codes = np.frombuffer(stripped, dtype=np.uint8)
    steps = (np.isin(codes, (ord("["), ord("{"))).astype(np.int32)) - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max()) if steps.size else 0


def allowed_host_names(host: str, token: str | None, configured: list[str] | None = None) -> frozenset[str]:
    """The ``Host`` names the server answers to: ``configured`` (or ``SYNTH_ALLOWED_HOSTS``, comma
    separated) when given; else the loopback names plus the address it is bound to. A server bound
    to every interface with a token answers any name (the token is what protects it)."""
    names = configured
    if names is None:
        env = os.environ.get(ALLOWED_HOSTS_ENV, "")
        names = [n.strip() for n in env.split(",") if n.strip()] or None
    if names:
        return frozenset(host_name(n) if n != "*" else "*" for n in names)
    if host in WILDCARD_HOSTS:
        return frozenset({"*"}) if token else LOOPBACK
    return frozenset({*LOOPBACK, host_name(host)})


def validation_message(errors: Any) -> tuple[str, str | None]:
    """(message, field) of a request's first validation error; ``field`` is a dotted field path
    (``rows.0.domain``, ``target_count``), ``body`` for a body that is not JSON, never a
    character position."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        where = first.get("loc", ())
        position = where[-1] if where and isinstance(where[-1], int) else None
        error = (first.get("ctx") or {}).get("error", "malformed JSON")
        at = f" at character {position}" if position is not None else ""
        return f"body: malformed JSON{at}: {error}", "body"
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = ".".join(loc) or None
    return f"{field or 'request'}: {first.get('msg')}", field
