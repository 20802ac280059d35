"""Logs and archives as rows of a shared store (store.blobs), on both databases."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from skyjobs.controller import store as st


@pytest.fixture
def db(store_target: Path | str) -> Iterator[st.SyncStore]:
    store = st.SyncStore(store_target)
    yield store
    store.close()


def test_appends_are_idempotent_by_offset_and_reads_slice_anywhere(db: st.SyncStore) -> None:
    assert db.append_logs([(1, 1, 0, 0, b"hello "), (1, 1, 1, 0, b"other")]) == [6, 5]
    # A replay, an overlap (posted to two controllers after a failover), a gap.
    assert db.append_logs([(1, 1, 0, 0, b"hello "), (1, 1, 0, 3, b"lo world\n"),
                           (1, 1, 0, 100, b"gap")]) == [6, 12, 12]
    assert db.read_log(1, 1, 0, 0, 1000) == (b"hello world\n", 12, 0)
    assert db.read_log(1, 1, 0, 4, 3) == (b"o w", 12, 4)
    assert db.read_log(1, 1, 0, None, 100, tail=6) == (b"world\n", 12, 6)
    assert db.read_log(9, 1, 0, 0, 10) == (b"", 0, 0)


@settings(max_examples=30, deadline=None)
@given(chunks=hs.lists(hs.tuples(hs.integers(0, 40), hs.binary(min_size=1, max_size=12)),
                       max_size=12))
def test_any_sequence_of_posts_keeps_the_log_a_prefix_of_the_stream(
        chunks: list[tuple[int, bytes]]) -> None:
    """Agents post chunks of one stream at offsets; whatever order, repeats or gaps, the
    stored log is exactly the stream's prefix that was ever contiguous (as with files)."""
    stream = bytes(range(256)) * 2
    db = _sqlite()
    expect = b""
    for offset, piece in chunks:
        data = stream[offset:offset + len(piece)]
        db.append_logs([(1, 1, 0, offset, data)])
        if offset <= len(expect) < offset + len(data):
            expect += data[len(expect) - offset:]
    assert db.read_log(1, 1, 0, 0, 10_000)[0] == expect


_DBS: list[st.SyncStore] = []


def _sqlite() -> st.SyncStore:
    if _DBS:
        _DBS[0].conn.execute("DELETE FROM log_chunks")
        return _DBS[0]
    _DBS.append(st.SyncStore(Path(tempfile.mkdtemp()) / "b.db"))
    return _DBS[0]


def test_archives_round_trip_and_the_sweep_finds_old_or_dropped_ones(db: st.SyncStore) -> None:
    db.save_archive("a" * 64, b"\x1f\x8b tar")
    db.save_archive("a" * 64, b"\x1f\x8b tar")  # two submits of one workdir: one row
    db.save_archive("b" * 64, b"other")
    assert db.read_archive("a" * 64) == b"\x1f\x8b tar" and db.read_archive("c" * 64) is None
    assert db.archive_rows_before(0.0, {"b" * 64}) == ["b" * 64]
    assert db.delete_archive_rows(["b" * 64]) == 1
    assert db.read_archive("b" * 64) is None


def test_removing_a_job_removes_its_log_rows(db: st.SyncStore) -> None:
    job = db.create_job("j", {"spec": {}}, False, "sky")
    db.append_logs([(job, 1, 0, 0, b"x")])
    db.transition(job, st.CANCELLING, "stop")
    db.transition(job, st.CANCELLED, "stopped")
    batch = db.gc_jobs(float("inf"), 10)
    assert batch.job_ids == [job] and batch.counts["log_chunks"] == 1
    assert db.read_log(job, 1, 0, 0, 10) == (b"", 0, 0)
