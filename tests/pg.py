"""The PostgreSQL the tests run against: a fresh schema per test on a real server.

``SKYJOBS_TEST_DATABASE_URL`` names the database (default: the local server's ``postgres``
database, trust auth). Each test gets its own schema, named in the URL's ``search_path``, so
tests never see each other's rows and dropping the schema removes everything. Without a
server the PostgreSQL variants skip (one summary line says how to enable them), unless
``SKYJOBS_REQUIRE_POSTGRES`` is set (CI), where they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from urllib.parse import quote

import psycopg
import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
HOW_TO_ENABLE = ("PostgreSQL variants skipped: no server at {url}; start PostgreSQL there or "
                 "set SKYJOBS_TEST_DATABASE_URL to enable them")


def base_url() -> str:
    return os.environ.get("SKYJOBS_TEST_DATABASE_URL") or DEFAULT_URL


def required() -> bool:
    return os.environ.get("SKYJOBS_REQUIRE_POSTGRES", "") not in ("", "0")


@cache
def unreachable_reason() -> str | None:
    """None when the server answers; else why not (cached: one probe per session)."""
    try:
        with psycopg.connect(base_url(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as err:
        return (str(err).strip().splitlines() or ["unreachable"])[0]
    return None


SKIPPED: list[str] = []  # filled when a variant skips; the summary prints one line


def require() -> None:
    """Skip (or, where PostgreSQL is required, fail) when the server is unreachable."""
    reason = unreachable_reason()
    if reason is None:
        return
    if required():
        pytest.fail(f"PostgreSQL required (SKYJOBS_REQUIRE_POSTGRES) but {base_url()} is "
                    f"unreachable: {reason}")
    SKIPPED.append(reason)
    pytest.skip(HOW_TO_ENABLE.format(url=base_url()))


def with_search_path(url: str, schema: str) -> str:
    """``url`` with its sessions in ``schema`` (and named after it, to be found and ended)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}&application_name={schema}"


@contextmanager
def fresh_schema(prefix: str = "t") -> Iterator[str]:
    """A new, empty schema; yields a URL whose connections use it. Dropped afterwards."""
    require()
    schema = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(base_url(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(base_url(), schema)
    finally:
        drop_schema(schema)


def drop_schema(schema: str) -> None:
    with psycopg.connect(base_url(), autocommit=True) as conn:
        # Sessions a killed or stopped controller left would hold locks DROP waits on.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE application_name = %s AND pid <> pg_backend_pid()", (schema,))
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
