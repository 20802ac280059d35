"""The schema: numbered migrations, one list for both databases.

Each migration is written once, in SQLite's dialect; :func:`postgres_script` turns its DDL
into PostgreSQL's (identity keys, 8-byte integers and floats: PostgreSQL's ``real`` is 4
bytes and would round a timestamp to the minute). Version N is the same schema on both, which
``tests/unit/test_store_schema.py`` checks column by column. A new migration is appended,
never edited.
"""

from __future__ import annotations

import re

MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        task_json TEXT NOT NULL,
        task_id TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        ended_at REAL,
        recovery_count INTEGER NOT NULL DEFAULT 0,
        restart_count INTEGER NOT NULL DEFAULT 0,
        attempt_count INTEGER NOT NULL DEFAULT 0,
        current_attempt INTEGER,
        exit_code INTEGER,
        reason TEXT,
        has_archive INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_status ON jobs(status);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        from_status TEXT,
        to_status TEXT,
        reason TEXT,
        exit_code INTEGER,
        attempt INTEGER,
        placement TEXT
    );
    CREATE INDEX events_job ON events(job_id, id);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        n INTEGER NOT NULL,
        status TEXT NOT NULL,
        cloud TEXT NOT NULL,
        region TEXT NOT NULL,
        zone TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        use_spot INTEGER NOT NULL,
        price_per_hour REAL NOT NULL,
        num_nodes INTEGER NOT NULL,
        instance_ids TEXT NOT NULL,
        created_at REAL NOT NULL,
        running_at REAL,
        ended_at REAL,
        end_reason TEXT,
        exit_code INTEGER,
        notice_at REAL,
        notice_deadline REAL,
        released INTEGER NOT NULL DEFAULT 0,
        UNIQUE(job_id, n)
    );
    CREATE INDEX attempts_unreleased ON attempts(released, status);
    CREATE TABLE nodes (
        attempt_id INTEGER NOT NULL REFERENCES attempts(id),
        rank INTEGER NOT NULL,
        phase TEXT NOT NULL,
        exit_code INTEGER,
        updated_at REAL NOT NULL,
        PRIMARY KEY (attempt_id, rank)
    );
    CREATE TABLE zone_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cloud TEXT NOT NULL,
        region TEXT NOT NULL,
        zone TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        use_spot INTEGER NOT NULL,
        kind TEXT NOT NULL,
        at REAL NOT NULL,
        value REAL
    );
    CREATE INDEX zone_events_at ON zone_events(at);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        event_id INTEGER NOT NULL REFERENCES events(id),
        hook TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        delivered_at REAL,
        last_error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX outbox_pending ON outbox(delivered_at, job_id, hook, id);
    """,
    """
    CREATE TABLE prices (
        cloud TEXT NOT NULL,
        region TEXT NOT NULL,
        zone TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        price REAL NOT NULL,
        observed_at REAL NOT NULL,
        PRIMARY KEY (cloud, region, zone, instance_type)
    );
    """,
    """
    ALTER TABLE attempts ADD COLUMN ondemand_price REAL;
    """,
    """
    ALTER TABLE jobs ADD COLUMN launch_rounds INTEGER NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE jobs ADD COLUMN array_id INTEGER;
    ALTER TABLE jobs ADD COLUMN array_rank INTEGER;
    CREATE INDEX jobs_array ON jobs(array_id);
    """,
    """
    ALTER TABLE jobs ADD COLUMN task_index INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN task_count INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE attempts ADD COLUMN task_index INTEGER NOT NULL DEFAULT 0;
    """,
    # Node-hours and cost of ended attempts, kept up to date as each attempt ends (in its
    # transaction), so a metrics scrape reads a few rows instead of every attempt ever.
    """
    CREATE TABLE usage_totals (
        cloud TEXT NOT NULL,
        zone TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        use_spot INTEGER NOT NULL,
        node_hours REAL NOT NULL,
        cost REAL NOT NULL,
        PRIMARY KEY (cloud, zone, instance_type, use_spot)
    );
    INSERT INTO usage_totals
        SELECT cloud, zone, instance_type, use_spot, SUM(h), SUM(h * price_per_hour)
        FROM (SELECT cloud, zone, instance_type, use_spot, price_per_hour,
                     node_hours(created_at, ended_at, num_nodes, ended_at) AS h
              FROM attempts WHERE status = 'ended') AS ended
        GROUP BY cloud, zone, instance_type, use_spot;
    CREATE INDEX attempts_status ON attempts(status);
    """,
    # The retention sweep finds ended jobs by when they ended, and their webhook rows.
    """
    CREATE INDEX jobs_ended ON jobs(ended_at);
    CREATE INDEX outbox_job ON outbox(job_id);
    """,
    # Several controllers on one database (docs/ha.md): each process registers as a member;
    # a job that needs a runner (live, or ended with instances to release) has a lease row
    # naming its owner, a fencing token and an expiry; reports heard by a controller that
    # does not own the job reach its owner through wakeups.
    """
    CREATE TABLE controllers (
        id TEXT PRIMARY KEY,
        url TEXT,
        agent_url TEXT,
        host TEXT,
        pid INTEGER,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        stopped_at REAL
    );
    CREATE TABLE job_leases (
        job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
        owner TEXT,
        token INTEGER NOT NULL DEFAULT 0,
        expires_at REAL NOT NULL DEFAULT 0,
        acquired_at REAL
    );
    CREATE INDEX job_leases_owner ON job_leases(owner);
    CREATE TABLE wakeups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL,
        attempt_id INTEGER,
        rank INTEGER,
        kind TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX wakeups_job ON wakeups(job_id);
    INSERT INTO job_leases(job_id, owner, token, expires_at)
        SELECT id, NULL, 0, 0 FROM jobs j WHERE j.status IN
            ('PENDING', 'PROVISIONING', 'RUNNING', 'RECOVERING', 'CANCELLING')
            OR EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = j.id AND a.released = 0);
    """,
    # Logs and workdir archives in the database when it is shared (PostgreSQL), so every
    # controller serves them; SQLite keeps them as files in the state dir (tables unused).
    """
    CREATE TABLE log_chunks (
        job_id INTEGER NOT NULL,
        attempt_n INTEGER NOT NULL,
        rank INTEGER NOT NULL,
        start INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (job_id, attempt_n, rank, start)
    );
    CREATE TABLE archives (
        digest TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    """,
]


# What PostgreSQL needs before migration N runs: SQLite gets node_hours() as a Python
# function on each connection; PostgreSQL keeps it in the schema (same formula as
# models.node_hours, checked against it by a property test).
POSTGRES_BEFORE: dict[int, str] = {
    1: """
    CREATE FUNCTION node_hours(created_at DOUBLE PRECISION, ended_at DOUBLE PRECISION,
                               num_nodes BIGINT, until DOUBLE PRECISION)
    RETURNS DOUBLE PRECISION LANGUAGE sql IMMUTABLE AS $$
        SELECT GREATEST(0.0, LEAST(COALESCE(ended_at, until), until) - created_at)
               / 3600.0 * num_nodes
    $$;
    """,
}

_PG_TYPES = [
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
]


def postgres_script(number: int) -> str:
    """Migration ``number`` (1-based) in PostgreSQL's dialect."""
    script = MIGRATIONS[number - 1]
    for pattern, replacement in _PG_TYPES:
        script = pattern.sub(replacement, script)
    return POSTGRES_BEFORE.get(number, "") + script
