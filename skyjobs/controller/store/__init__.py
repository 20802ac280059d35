"""The store: the only package that speaks SQL.

SQLite in the state dir by default, PostgreSQL when ``database_url`` names one. Every state
change is one compare-and-set transaction with its event; :class:`Store` runs every call on
the store's own thread, so the event loop never blocks on the database.

- :mod:`.models`: the records (Job, Attempt, Snapshot) and the node-hours formula;
- :mod:`.schema`: the numbered migrations, one list for both databases;
- :mod:`.dialect`: what differs between SQLite and PostgreSQL;
- :mod:`.sync`: the SQL; :mod:`.facade`: the async face; :mod:`.inspect`: ``skyjobs db``.
"""

from skyjobs.controller.store.facade import Store
from skyjobs.controller.store.inspect import (
    SECRET_MARK,
    open_readonly,
    table_counts,
    table_rows,
)
from skyjobs.controller.store.models import (
    Attempt,
    GcBatch,
    Job,
    Notice,
    Snapshot,
    ZoneEvent,
    check_transition,
    node_hours,
)
from skyjobs.controller.store.schema import MIGRATIONS
from skyjobs.controller.store.sync import SyncStore
from skyjobs.states import ALL_STATES, LIVE, TERMINAL, TRANSITIONS, JobStatus

# The states and the state machine live in states.py; these names are the store's own API.
PENDING, PROVISIONING, RUNNING = JobStatus.PENDING, JobStatus.PROVISIONING, JobStatus.RUNNING
RECOVERING, CANCELLING = JobStatus.RECOVERING, JobStatus.CANCELLING
SUCCEEDED, FAILED, CANCELLED = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED
FAILED_NO_RESOURCE = JobStatus.FAILED_NO_RESOURCE

__all__ = [
    "ALL_STATES", "CANCELLED", "CANCELLING", "FAILED", "FAILED_NO_RESOURCE", "LIVE", "MIGRATIONS",
    "PENDING", "PROVISIONING", "RECOVERING", "RUNNING", "SECRET_MARK", "SUCCEEDED", "TERMINAL",
    "TRANSITIONS", "Attempt", "GcBatch", "Job", "JobStatus", "Notice", "Snapshot", "Store",
    "SyncStore", "ZoneEvent", "check_transition", "node_hours", "open_readonly", "table_counts",
    "table_rows"]
