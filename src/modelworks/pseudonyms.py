"""Keyed pseudonyms for user ids: what runs, artifacts and reports hold instead of raw ids.

The key comes from the environment (`MODELWORKS_PSEUDONYM_KEY`) and is never written into a run;
the same key maps the same id to the same pseudonym, so a server started with it can look up a
user a run knows by their raw id. Without the variable a random key is drawn per process: ids
stay hidden, and lookups by raw id are refused (the run's manifest says which).

pseudonym = the first 16 hex digits of SHA-256(key + id), the same in SQL (DuckDB's sha256) and
in Python.
"""

from __future__ import annotations

import hashlib
import os
import secrets

ENV = "MODELWORKS_PSEUDONYM_KEY"
_RANDOM = secrets.token_hex(16)


def key() -> tuple[str, str]:
    """(key, where it came from: 'env' or 'random')."""
    value = os.environ.get(ENV, "")
    return (value, "env") if value else (_RANDOM, "random")


def pseudonym(user: str, k: str | None = None) -> str:
    k = key()[0] if k is None else k
    return hashlib.sha256((k + str(user)).encode()).hexdigest()[:16]


def sql(column: str) -> str:
    """The DuckDB expression of `column`'s pseudonym; bind the key as the parameter `$key`."""
    return f"substr(sha256($key || CAST({column} AS VARCHAR)), 1, 16)"
