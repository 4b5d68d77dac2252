"""Domain names: the one rule for what may be a partition key, a folder name and a table suffix."""

from __future__ import annotations

import re

DOMAIN_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class UnsafeDomainError(ValueError):
    """A domain name that could escape a folder, break SQL or confuse a partition key."""


def validate_domain_name(name: str, *, source: str | None = None) -> str:
    """Return ``name`` unchanged when it is a safe identifier, else raise with a fix.

    Domain names become Parquet folder names (``domain=<d>``), DuckDB identifiers and Dagster
    partition keys, so anything beyond ``^[a-z][a-z0-9_]{0,63}$`` is refused outright.
    """
    if not isinstance(name, str) or not DOMAIN_PATTERN.fullmatch(name):
        where = f" in {source}" if source else ""
        raise UnsafeDomainError(
            f"unsafe domain name {name!r}{where}: a domain must match ^[a-z][a-z0-9_]{{0,63}}$ "
            "(lowercase letter first, then lowercase letters, digits or underscores, at most 64 "
            "characters). Rename the domain, e.g. 'api_development'."
        )
    return name
