"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from skyjobs.config import load_config
from skyjobs.controller.daemon import Controller
from skyjobs.providers.fake import FakeProvider
from tests.unit.harness import Harness


@pytest.fixture
async def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            database_env: dict[str, str]) -> AsyncIterator[Harness]:
    """A controller in this process on the in-memory provider, on SQLite and on PostgreSQL
    (each test that uses it runs on both)."""
    for key, value in database_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SKYJOBS_LAUNCH_BACKOFF_INITIAL", "0.05")
    monkeypatch.setenv("SKYJOBS_LAUNCH_BACKOFF_MAX", "0.1")
    monkeypatch.setenv("SKYJOBS_MAX_LAUNCH_ROUNDS", "2")
    fake = FakeProvider()
    ctl = Controller(load_config(state_dir=tmp_path / "state", port=0), providers={"local": fake})
    await ctl.start()
    async with aiohttp.ClientSession() as http:
        yield Harness(ctl, fake, http)
    await ctl.shutdown()
