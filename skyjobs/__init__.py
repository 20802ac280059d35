"""skyjobs: a managed-jobs controller that keeps long spot jobs alive through preemptions.

The Python SDK is importable from here: ``skyjobs.Client`` (blocking), ``skyjobs.AsyncClient``
(asyncio), the ``skyjobs.Task`` / ``skyjobs.Resources`` builders and the result models
(``skyjobs.Job``, ``Attempt``, ``Event``, ``Placement``, ``Plan``). They are loaded on first
use (PEP 562 ``__getattr__``): ``import skyjobs`` itself needs only the standard library,
because this file ships inside the node agent's zipapp (skyjobs/controller/agent_dist.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from skyjobs.aio import AsyncClient
    from skyjobs.client import Client
    from skyjobs.models import Attempt, Event, Job, Placement, Plan
    from skyjobs.sdk import Resources, Task

# name -> the module that defines it
_LAZY = {
    "Client": "skyjobs.client", "AsyncClient": "skyjobs.aio",
    "Task": "skyjobs.sdk", "Resources": "skyjobs.sdk",
    "Job": "skyjobs.models", "Attempt": "skyjobs.models", "Event": "skyjobs.models",
    "Placement": "skyjobs.models", "Plan": "skyjobs.models",
}
__all__ = ["AsyncClient", "Attempt", "Client", "Event", "Job", "Placement", "Plan", "Resources",
           "Task", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'skyjobs' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
