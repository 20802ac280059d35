"""The schema is the same on SQLite and PostgreSQL at every migration number, and the SQL
node_hours() PostgreSQL keeps is the Python formula SQLite calls."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from skyjobs.controller.store import node_hours
from skyjobs.controller.store.schema import MIGRATIONS, postgres_script
from tests import pg

TYPE_CLASS = {"INTEGER": "int", "BIGINT": "int", "REAL": "float", "DOUBLE PRECISION": "float",
              "TEXT": "text", "BLOB": "bytes", "BYTEA": "bytes"}


def sqlite_schema(upto: int) -> dict[str, Any]:
    conn = sqlite3.connect(":memory:")
    conn.create_function("node_hours", 4, node_hours)
    for script in MIGRATIONS[:upto]:
        conn.executescript(script)
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
    out: dict[str, Any] = {}
    for t in tables:
        cols = {r[1]: (TYPE_CLASS[r[2]], bool(r[3]) or bool(r[5]), r[5] > 0)
                for r in conn.execute(f"PRAGMA table_info({t})")}
        indexes = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=? AND sql IS NOT"
            " NULL", (t,))}
        out[t] = (cols, indexes)
    conn.close()
    return out


def postgres_schema(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tables = [r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema=current_schema()")]
    for t in tables:
        pk = {r[0] for r in conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
            (t,))}
        cols = {r[0]: (TYPE_CLASS[r[1].upper()], r[2] == "NO", r[0] in pk)
                for r in conn.execute(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                    " WHERE table_schema=current_schema() AND table_name=%s", (t,))}
        indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname=current_schema() AND"
            " tablename=%s AND indexname NOT LIKE '%%_pkey' AND indexname NOT LIKE '%%_key'",
            (t,))}
        out[t] = (cols, indexes)
    return out


@pytest.fixture
def pg_conn() -> Iterator[psycopg.Connection[Any]]:
    with pg.fresh_schema() as url, psycopg.connect(url, autocommit=True) as conn:
        yield conn


def test_both_databases_build_the_same_schema_at_every_migration(
        pg_conn: psycopg.Connection[Any]) -> None:
    for number in range(1, len(MIGRATIONS) + 1):
        pg_conn.execute(postgres_script(number))
        assert postgres_schema(pg_conn) == sqlite_schema(number), f"migration {number}"


times = hs.floats(min_value=0, max_value=4e9, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(created=times, ended=hs.none() | times, nodes=hs.integers(0, 64), until=times)
def test_the_sql_node_hours_is_the_python_formula(created: float, ended: float | None,
                                                  nodes: int, until: float) -> None:
    conn = _formula_conn()
    got = conn.execute("SELECT node_hours(%s, %s, %s, %s)",
                       (created, ended, nodes, until)).fetchone()[0]
    assert got == pytest.approx(node_hours(created, ended, nodes, until), rel=1e-12, abs=1e-9)


_CONN: list[psycopg.Connection[Any]] = []


def _formula_conn() -> psycopg.Connection[Any]:
    """One schema holding the function for all examples (dropped at interpreter exit)."""
    if not _CONN:
        pg.require()
        schema = "f_formula"
        conn = psycopg.connect(pg.base_url(), autocommit=True)
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path = {schema}")
        conn.execute(postgres_script(1))
        _CONN.append(conn)
    return _CONN[0]


@pytest.fixture(scope="module", autouse=True)
def _drop_formula_schema() -> Iterator[None]:
    yield
    if _CONN:
        _CONN[0].execute("DROP SCHEMA IF EXISTS f_formula CASCADE")
        _CONN.pop().close()
