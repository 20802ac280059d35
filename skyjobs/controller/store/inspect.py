"""``skyjobs db``: read-only inspection of a SQLite store, through sqlite-utils.

sqlite-utils is the tool for looking at a SQLite file (tables, counts, rows as dicts). The
controller's own reads and writes stay plain SQL in :mod:`.sync`, shared with PostgreSQL,
where sqlite-utils cannot follow (its DDL helpers and ``transform()`` are SQLite's alone).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import sqlite_utils

from skyjobs.exceptions import NotFoundError

SECRET_MARK = "<redacted>"


def open_readonly(path: Path) -> sqlite_utils.Database:
    """The store's file, read-only: safe next to a running controller (WAL readers never
    block its writer)."""
    if not path.exists():
        raise NotFoundError(f"{path} does not exist (no controller has used this state dir)")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    return sqlite_utils.Database(conn)


def table_counts(db: sqlite_utils.Database) -> dict[str, int]:
    return {name: db.table(name).count for name in db.table_names()}


def table_rows(db: sqlite_utils.Database, table: str, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` rows of a table, task secrets redacted."""
    if table not in db.table_names():
        raise NotFoundError(f"no table {table!r} (tables: {', '.join(db.table_names())})")
    rows = list(db.table(table).rows_where(order_by="rowid DESC", limit=limit))
    if table == "jobs":
        for row in rows:
            row["task_json"] = json.dumps(_redact(json.loads(row["task_json"])))
    return rows


def _redact(task: dict[str, Any]) -> dict[str, Any]:
    spec = task.get("spec") or {}
    secrets = spec.get("secrets") or {}
    return {**task, "spec": {**spec, "secrets": {k: SECRET_MARK for k in secrets}}}

