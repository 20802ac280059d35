"""Where SQLite and PostgreSQL differ, in one place.

The store writes each statement once, with ``?`` placeholders and SQL both databases read
alike. A dialect opens the connection, runs the migrations, and supplies the few fragments
that differ: how a write transaction begins, row locks, case-insensitive LIKE. Its
connection has ``sqlite3``'s face (``execute`` returning a cursor whose rows answer both
``row[0]`` and ``row["name"]``), so the store's SQL code is the same for both.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
from psycopg.adapt import Loader

from skyjobs.controller.store.models import node_hours
from skyjobs.controller.store.schema import MIGRATIONS, postgres_script
from skyjobs.exceptions import ConfigError, StoreUnavailableError

T = TypeVar("T")

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# Settings of every PostgreSQL session: a statement or lock wait that hangs fails instead of
# wedging the store's thread, a transaction left open by a frozen process is ended, and a
# silent peer is noticed by TCP keepalives rather than after minutes.
SESSION_OPTIONS = ("-c statement_timeout=30000 -c lock_timeout=10000"
                   " -c idle_in_transaction_session_timeout=60000")
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3, "tcp_user_timeout": 25000, "connect_timeout": 10}
RETRIES = 5  # a deadlock or serialization failure re-runs the whole call this many times


def is_postgres(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def redact_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://<unparseable>"
    host, db = params.get("host", "localhost"), params.get("dbname", "")
    return f"postgresql://{params.get('user', '')}@{host}:{params.get('port', 5432)}/{db}"


class SqliteDialect:
    name = "sqlite"
    begin = "BEGIN IMMEDIATE"  # one writer per database: a transaction never loses a race
    for_update = ""  # (BEGIN IMMEDIATE already serializes writers)
    skip_locked = ""
    like_ci = "LIKE"  # ASCII case-insensitive already

    def __init__(self, path: Path) -> None:
        self.path = path

    def connect(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.create_function("node_hours", 4, node_hours, deterministic=True)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def migrate(self, conn: Any) -> None:
        version = self.schema_version(conn)
        refuse_newer(version)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits on its own, so the version bump rides inside the script.
            conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    @staticmethod
    def schema_version(conn: Any) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    @staticmethod
    def run(call: Callable[[], T]) -> T:
        return call()


def refuse_newer(version: int) -> None:
    if version > len(MIGRATIONS):
        # A newer skyjobs migrated this store: this code would misread what it added.
        raise ConfigError(f"the store's schema is version {version}, newer than this "
                          f"skyjobs knows ({len(MIGRATIONS)}): upgrade skyjobs to run on it")


class Row:
    """A result row read by position or by column name, and ``dict(row)``-able, as
    ``sqlite3.Row`` is (the store's code reads rows both ways)."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    index = {col.name: i for i, col in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


def _number(value: Decimal) -> int | float:
    # PostgreSQL answers SUM(bigint) with numeric: give callers the int or float SQLite
    # would (a Decimal would also break json.dumps).
    return int(value) if value == value.to_integral_value() else float(value)


class PostgresConnection:
    """One psycopg connection in autocommit (the store issues BEGIN/COMMIT itself, as on
    SQLite), with ``?`` placeholders translated once per statement text. A dropped
    connection raises StoreUnavailableError and is replaced on the next call."""

    def __init__(self, url: str, idle_timeout_s: float | None = None) -> None:
        self.url = url
        self.idle_timeout_s = idle_timeout_s
        self._raw: Any = None
        self._texts: dict[str, str] = {}
        self.generation = 0  # bumped per new session: session-level locks die with one

    def _live(self) -> Any:
        if self._raw is not None and not self._raw.closed and not self._raw.broken:
            return self._raw
        params = psycopg.conninfo.conninfo_to_dict(self.url)
        options = f"{params.pop('options', '')} {SESSION_OPTIONS}".strip()
        if self.idle_timeout_s:
            # The server ends the session of a frozen controller: its duty locks go free.
            options += f" -c idle_session_timeout={int(self.idle_timeout_s * 1000)}"
        merged: dict[str, Any] = {**KEEPALIVES, "application_name": "skyjobs", **params,
                                  "options": options}
        try:
            raw = psycopg.connect(autocommit=True, row_factory=_row_factory, **merged)
        except psycopg.OperationalError as err:
            first = (str(err).strip().splitlines() or [""])[0]
            raise StoreUnavailableError(f"cannot reach {redact_url(self.url)}: {first}") \
                from err
        raw.adapters.register_loader("numeric", _NumericLoader)
        self._raw = raw
        self.generation += 1
        return raw

    def _pg(self, sql: str) -> str:
        text = self._texts.get(sql)
        if text is None:
            text = self._texts[sql] = sql.replace("%", "%%").replace("?", "%s")
        return text

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        conn = self._live()
        if not params:
            return conn.execute(sql)
        return conn.execute(self._pg(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        cur = self._live().cursor()
        cur.executemany(self._pg(sql), rows)
        return cur

    @property
    def broken(self) -> bool:
        return self._raw is None or self._raw.closed or self._raw.broken

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()


class _NumericLoader(Loader):
    def load(self, data: Any) -> int | float:
        return _number(Decimal(bytes(data).decode()))


class PostgresDialect:
    name = "postgres"
    begin = "BEGIN"  # READ COMMITTED; job-scoped transactions lock the job row first
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    like_ci = "ILIKE"

    def __init__(self, url: str, idle_timeout_s: float | None = None) -> None:
        self.url = url
        self.idle_timeout_s = idle_timeout_s

    def connect(self) -> PostgresConnection:
        conn = PostgresConnection(self.url, self.idle_timeout_s)
        conn.execute("SELECT 1")  # fail at start, with the reason, not at the first job
        return conn

    def migrate(self, conn: Any) -> None:
        """All pending migrations in one transaction, under a lock, so controllers that start
        together apply each exactly once (PostgreSQL's DDL is transactional)."""
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('skyjobs-migrate:' ||"
                         " current_schema()))")
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT"
                         " PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
            version = self.schema_version(conn)
            refuse_newer(version)
            for number in range(version + 1, len(MIGRATIONS) + 1):
                conn.execute(postgres_script(number))
                conn.execute("INSERT INTO schema_migrations(version, applied_at)"
                             " VALUES (?, ?)", (number, time.time()))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def schema_version(conn: Any) -> int:
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
                           ).fetchone()
        return int(row[0])

    @staticmethod
    def run(call: Callable[[], T]) -> T:
        """One store call: re-run whole on a deadlock or serialization failure (each call is
        its own transaction, so nothing of the failed run remains); a lost connection
        becomes StoreUnavailableError."""
        for attempt in range(RETRIES):
            try:
                return call()
            except psycopg.errors.TransactionRollback:
                if attempt == RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
            except psycopg.OperationalError as err:
                first = (str(err).strip().splitlines() or [""])[0]
                raise StoreUnavailableError(f"database call failed: {first}") from err
        raise AssertionError("unreachable")


Dialect = SqliteDialect | PostgresDialect


def dialect_for(target: str | Path, idle_timeout_s: float | None = None) -> Dialect:
    if is_postgres(target):
        return PostgresDialect(str(target), idle_timeout_s)
    return SqliteDialect(Path(target))
