"""The controller wires metrics, webhooks and the provider wrapper together."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path

import aiohttp
import pytest

from skyjobs.config import WebhookConfig, load_config
from skyjobs.controller.daemon import Controller
from skyjobs.controller.metrics import InstrumentedProvider
from skyjobs.providers.fake import FakeProvider
from tests.integration.test_webhooks import SECRET, TASK, Receiver, until, verified


async def test_metrics_and_webhook_test_route(tmp_path: Path) -> None:
    receiver = await Receiver().start()
    hooks = [WebhookConfig(name="ops", url=receiver.url, secret=SECRET, events=["all"])]
    fake = FakeProvider()
    ctl = Controller(load_config(state_dir=tmp_path / "s", port=0, webhooks=hooks),
                     providers={"local": fake})
    await ctl.start()
    try:
        assert isinstance(ctl.providers["local"], InstrumentedProvider)
        auth = {"Authorization": f"Bearer {ctl.token}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{ctl.url}/metrics") as resp:
                assert resp.status == 401
            async with http.post(f"{ctl.url}/api/v1/jobs", json={"task": TASK},
                                 headers=auth) as resp:
                assert resp.status == 201
            # The submit and the launch transitions reach the receiver without a poll wait.
            await until("deliveries", lambda: len(receiver.acked) >= 2)
            await until("a launch", lambda: fake.alive())
            async with http.get(f"{ctl.url}/metrics", headers=auth) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await resp.text()
            assert 'skyjobs_jobs{state="PROVISIONING"} 1.0' in text
            launches = 'skyjobs_provider_api_calls_total{cloud="local",op="launch",outcome="ok"}'
            assert launches in text
            assert "skyjobs_cost_dollars_total" in text
            async with http.post(f"{ctl.url}/api/v1/webhooks/test", json={"name": "ops"},
                                 headers=auth) as resp:
                reply = await resp.json()
            assert reply["ok"] and reply["status"] == 200
            assert verified(receiver.acked[-1]) and receiver.acked[-1].payload["event"] == "test"
            async with http.post(f"{ctl.url}/api/v1/webhooks/test", json={"name": "nope"},
                                 headers=auth) as resp:
                assert resp.status == 404
    finally:
        await ctl.shutdown()
        await receiver.stop()


async def test_controller_feeds_the_systemd_watchdog(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn") as short:
        path = str(Path(short) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            monkeypatch.setenv("WATCHDOG_USEC", "100000")
            ctl = Controller(load_config(state_dir=tmp_path / "s", port=0),
                             providers={"local": FakeProvider()})
            await ctl.start()
            try:
                loop = asyncio.get_running_loop()
                got = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
                assert got.decode() == "WATCHDOG=1\nSTATUS=0 live jobs"
            finally:
                await ctl.shutdown()
