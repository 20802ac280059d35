"""A fault-injecting wrapper around any provider, for tests and the chaos benchmark.

It makes a share of ``launch``/``status``/``terminate`` calls fail *before* acting (the
cloud never saw the call), fail *after* acting (the cloud did it, the answer was lost: the
case that breaks naive bookkeeping), or *stall* before acting; and it can hide freshly
launched instances from ``status`` for a while, as EC2's eventual consistency does.

``crash_before`` / ``crash_after`` kill the whole controller process (``os._exit(137)``,
what a ``kill -9`` looks like from outside) right before or right after the cloud acts. The
controller commits to its store before every cloud call, so these are exactly "killed
between a commit and its cloud call" and "killed after the cloud acted, before the result
was recorded".

Tests script exact one-shot faults with :meth:`FaultyProvider.inject`; the chaos benchmark
sets random shares and a script with :class:`FaultPlan` (from JSON). Never used by the
product itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from skyjobs.exceptions import ProviderError
from skyjobs.providers import base
from skyjobs.providers.base import InstanceInfo, LaunchRequest, Provider

Op = Literal["launch", "status", "terminate"]
Mode = Literal["before", "after", "stall", "crash_before", "crash_after"]
OPS: tuple[Op, ...] = ("launch", "status", "terminate")
MODES: tuple[Mode, ...] = ("before", "after", "stall", "crash_before", "crash_after")
CRASH_EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL

log = structlog.get_logger("skyjobs.chaos")


def crash_now() -> None:
    """Die like kill -9: no cleanup, no atexit, no flush of anything but this line."""
    os.write(2, b'{"event": "chaos: crashing the controller (os._exit 137)"}\n')
    os._exit(CRASH_EXIT_CODE)


@dataclass
class Scripted:
    """A one-shot fault: fires on the (skip+1)-th next call of ``op``."""

    op: str
    mode: str
    skip: int = 0


@dataclass
class FaultPlan:
    fail_before: float = 0.0  # share of calls that raise without acting
    fail_after: float = 0.0  # share of calls that act, then raise
    stall: float = 0.0  # share of calls that sleep stall_s before acting
    crash_before: float = 0.0  # share of calls that kill the process before acting
    crash_after: float = 0.0  # share of calls that kill the process after acting
    stall_s: float = 5.0
    invisible_s: float = 0.0  # launched instances read as not found for this long
    ops: frozenset[str] = frozenset(OPS)
    seed: int | None = None
    # One-shot faults, as [op, mode] or [op, mode, skip] (JSON friendly).
    script: list[Scripted] = field(default_factory=list)
    # A file another process drops to arm one-shot faults in a running controller:
    # {"script": [[op, mode, skip], ...]}; taken (renamed to .taken) on the next call.
    arm_file: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FaultPlan:
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault plan keys: {sorted(unknown)}")
        known = dict(raw)
        if "ops" in known:
            bad = set(known["ops"]) - set(OPS)
            if bad:
                raise ValueError(f"unknown ops: {sorted(bad)}")
            known["ops"] = frozenset(known["ops"])
        if "script" in known:
            known["script"] = [_scripted(entry) for entry in known["script"]]
        plan = cls(**known)
        shares = (plan.fail_before, plan.fail_after, plan.stall, plan.crash_before,
                  plan.crash_after)
        if any(s < 0 for s in shares) or sum(shares) > 1:
            raise ValueError("fault shares must be >= 0 and add up to at most 1")
        return plan


def _scripted(entry: Any) -> Scripted:
    if isinstance(entry, dict):
        entry = [entry.get("op"), entry.get("mode"), entry.get("skip", 0)]
    op, mode, *rest = entry
    if op not in OPS or mode not in MODES:
        raise ValueError(f"bad scripted fault {entry!r}: op in {OPS}, mode in {MODES}")
    return Scripted(str(op), str(mode), int(rest[0]) if rest else 0)


@dataclass
class FaultyProvider:
    inner: Provider
    plan: FaultPlan = field(default_factory=FaultPlan)
    # One-shot faults that fire on the next matching calls, before the random ones.
    scripted: list[Scripted] = field(default_factory=list)
    injected: list[tuple[str, str, float]] = field(default_factory=list)  # what fired, when
    crash: Callable[[], None] = crash_now  # tests replace this; the default never returns
    _launched_at: dict[str, float] = field(default_factory=dict)
    _rng: random.Random = field(init=False)
    name: str = field(init=False)  # the Provider protocol's plain attribute

    def __post_init__(self) -> None:
        self.name = self.inner.name
        self._rng = random.Random(self.plan.seed)
        self.scripted.extend(Scripted(s.op, s.mode, s.skip) for s in self.plan.script)

    def __getattr__(self, item: str) -> Any:
        # Extras (set_spot_capacity, spot_prices, list_owned, ...) pass through untouched.
        # Dataclass fields are found before this is called; guard against recursion while
        # the instance is being built (or copied) and `inner` is not set yet.
        if item.startswith("__") or item in self.__dataclass_fields__:
            raise AttributeError(item)
        return getattr(self.inner, item)

    def inject(self, op: Op, mode: Mode, count: int = 1, skip: int = 0) -> None:
        """Script `count` one-shot faults on op; the first fires after `skip` clean calls."""
        if op not in OPS or mode not in MODES:
            raise ValueError(f"op must be one of {OPS} and mode one of {MODES}")
        for i in range(count):
            self.scripted.append(Scripted(op, mode, skip if i == 0 else 0))

    def _take_armed(self) -> None:
        if self.plan.arm_file is None:
            return
        taken = f"{self.plan.arm_file}.taken"
        try:
            os.replace(self.plan.arm_file, taken)  # atomic: each arming is taken once
        except FileNotFoundError:
            return
        try:
            with open(taken) as f:
                raw = json.load(f)
            self.scripted.extend(_scripted(e) for e in raw.get("script", []))
        except (OSError, ValueError, TypeError, AttributeError) as err:
            log.warning("chaos: ignoring a bad arm file", error=str(err))
        log.warning("chaos: armed", scripted=[(s.op, s.mode, s.skip) for s in self.scripted])

    def _pick(self, op: str) -> str | None:
        self._take_armed()
        for i, s in enumerate(self.scripted):
            if s.op != op:
                continue
            if s.skip > 0:  # this call passes; the fault waits for a later one
                s.skip -= 1
                return None
            del self.scripted[i]
            return s.mode
        if op not in self.plan.ops:
            return None
        r = self._rng.random()
        for mode, share in (("before", self.plan.fail_before),
                            ("after", self.plan.fail_after), ("stall", self.plan.stall),
                            ("crash_before", self.plan.crash_before),
                            ("crash_after", self.plan.crash_after)):
            if r < share:
                return mode
            r -= share
        return None

    async def _call(self, op: str, ids: list[str], act: Callable[[], Awaitable[Any]]) -> Any:
        mode = self._pick(op)
        if mode is not None:
            self.injected.append((op, mode, time.time()))
            log.warning("chaos: injected fault", op=op, mode=mode, instances=ids)
            sys.stderr.flush()
        if mode == "before":
            raise ProviderError(f"injected fault: {op} failed before acting")
        if mode == "crash_before":
            self.crash()
            raise ProviderError(f"injected fault: {op} crashed before acting")
        if mode == "stall":
            await asyncio.sleep(self.plan.stall_s)
        result = await act()
        if mode == "after":
            raise ProviderError(f"injected fault: {op} acted, then failed")
        if mode == "crash_after":
            self.crash()
            raise ProviderError(f"injected fault: {op} acted, then crashed")
        return result

    async def launch(self, req: LaunchRequest) -> list[InstanceInfo]:
        async def act() -> list[InstanceInfo]:
            infos = await self.inner.launch(req)
            now = time.monotonic()
            for i in req.instance_ids:
                self._launched_at.setdefault(i, now)
            return infos
        result: list[InstanceInfo] = await self._call("launch", list(req.instance_ids), act)
        return result

    async def status(self, instance_ids: list[str]) -> dict[str, InstanceInfo]:
        async def act() -> dict[str, InstanceInfo]:
            infos = await self.inner.status(instance_ids)
            if self.plan.invisible_s > 0:
                now = time.monotonic()
                for i in instance_ids:
                    at = self._launched_at.get(i)
                    if at is not None and now - at < self.plan.invisible_s:
                        infos[i] = InstanceInfo(i, base.GONE, base.NOT_FOUND)
            return infos
        result: dict[str, InstanceInfo] = await self._call("status", list(instance_ids), act)
        return result

    async def terminate(self, instance_ids: list[str]) -> None:
        await self._call("terminate", list(instance_ids),
                         lambda: self.inner.terminate(instance_ids))

    async def preempt(self, instance_ids: list[str], notice_s: float) -> None:
        market = base.ability(self.inner, base.SimulatedMarket)
        if market is None:
            raise ProviderError(f"{self.name} cannot preempt on request")
        await market.preempt(instance_ids, notice_s)

    async def close(self) -> None:
        await self.inner.close()
