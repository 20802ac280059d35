"""What agents, the instance monitor and the API tell a job's runner through its inbox."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skyjobs.states import MessageKind


@dataclass(frozen=True)
class Message:
    kind: MessageKind
    attempt_id: int | None = None
    rank: int | None = None
    detail: Any = None
