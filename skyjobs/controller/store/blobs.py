"""Logs and workdir archives as rows, for a store several controllers share.

With one controller they are files in its state dir. With several, a node's log must be
readable from any controller (the agent may post to one and the user ask another), and a
job taken over must find its workdir archive. Appends stay idempotent by offset as with
files: a chunk replayed, or posted to two controllers after a failover, is stored once,
because a node's chunks are keyed by their start offset.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

LogItem = tuple[int, int, int, int, bytes]  # (job id, attempt n, rank, offset, data)


class BlobSql:
    """Mixed into SyncStore: ``self.conn``, ``self.d`` and ``self._tx`` are its."""

    conn: Any

    def _tx(self) -> Any:  # (SyncStore's)
        raise NotImplementedError

    def _log_size(self, c: Any, job_id: int, n: int, rank: int) -> int:
        row = c.execute("SELECT start + length(data) FROM log_chunks WHERE job_id=? AND"
                        " attempt_n=? AND rank=? ORDER BY start DESC LIMIT 1",
                        (job_id, n, rank)).fetchone()
        return int(row[0]) if row is not None else 0

    def append_logs(self, items: list[LogItem]) -> list[int]:
        """Store the part of each chunk past what its node's log already has; returns each
        log's size after. One transaction for the batch (the log writer's)."""
        out: list[int] = []
        with self._tx() as c:
            for job_id, n, rank, offset, data in items:
                size = self._log_size(c, job_id, n, rank)
                if offset <= size < offset + len(data):
                    # Two controllers appending one node at once: the second insert at
                    # the same start is dropped, and the size read again tells the truth.
                    c.execute("INSERT INTO log_chunks(job_id, attempt_n, rank, start, data)"
                              " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                              (job_id, n, rank, size, data[size - offset:]))
                    size = self._log_size(c, job_id, n, rank)
                out.append(size)
        return out

    def read_log(self, job_id: int, n: int, rank: int, offset: int | None,
                 limit: int, tail: int = 0) -> tuple[bytes, int, int]:
        """(data, size, start): up to ``limit`` bytes of a node's log from ``offset``, or
        from ``tail`` bytes before its end when ``offset`` is None."""
        with self._tx() as c:
            size = self._log_size(c, job_id, n, rank)
            start = max(0, size - tail) if offset is None else min(offset, size)
            rows = c.execute(
                "SELECT start, data FROM log_chunks WHERE job_id=? AND attempt_n=? AND"
                " rank=? AND start + length(data) > ? AND start < ? ORDER BY start",
                (job_id, n, rank, start, start + limit)).fetchall()
        data = b"".join(bytes(r[1]) for r in rows)
        first = rows[0][0] if rows else start
        return data[start - first:start - first + limit], size, start

    def save_archive(self, digest: str, data: bytes) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO archives(digest, data, created_at) VALUES (?, ?, ?)"
                      " ON CONFLICT DO NOTHING", (digest, data, time.time()))

    def read_archive(self, digest: str) -> bytes | None:
        row = self.conn.execute("SELECT data FROM archives WHERE digest=?",
                                (digest,)).fetchone()
        return bytes(row[0]) if row is not None else None

    def archive_rows_before(self, before: float, also: Collection[str]) -> list[str]:
        """Digests of stored archives older than ``before`` or among ``also``: those that
        may go once no kept job references them."""
        wanted = set(also)
        return [r[0] for r in self.conn.execute(
            "SELECT digest, created_at FROM archives") if r[1] < before or r[0] in wanted]

    def delete_archive_rows(self, digests: list[str]) -> int:
        removed = 0
        with self._tx() as c:
            for digest in digests:
                removed += c.execute("DELETE FROM archives WHERE digest=?",
                                     (digest,)).rowcount
        return removed
