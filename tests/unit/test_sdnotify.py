"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skyjobs.controller import sdnotify


@pytest.fixture
def systemd_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # Socket paths are limited to 107 bytes; pytest's tmp_path can be longer, so use a
    # short private directory of our own.
    with tempfile.TemporaryDirectory(prefix="sdn") as tmp:
        path = Path(tmp) / "notify"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        try:
            yield sock
        finally:
            sock.close()


async def receive(sock: socket.socket) -> str:
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), 10)
    return data.decode()


def pending(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_notify_sends_one_datagram(systemd_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1\nSTATUS=controller running") is True
    assert await receive(systemd_socket) == "READY=1\nSTATUS=controller running"


async def test_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"skyjobs-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1") is True
        assert await receive(sock) == "READY=1"


def test_without_systemd_notify_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_a_dead_socket_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("30000000", None, 15.0),
    ("30000000", "self", 15.0),
    ("30000000", "other", None),
    (None, None, None),
    ("0", None, None),
    ("soon", None, None),
])
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None,
                           expected: float | None) -> None:
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            own = str(os.getpid())
            monkeypatch.setenv(key, {"self": own, "other": own + "0"}.get(value, value))
    assert sdnotify.watchdog_interval() == expected


async def test_watchdog_pings_only_while_healthy(systemd_socket: socket.socket,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000")  # a ping every 10 ms
    healthy = True
    false_calls = 0

    def is_healthy() -> bool:
        nonlocal false_calls
        if not healthy:
            false_calls += 1
        return healthy

    task = asyncio.create_task(sdnotify.watchdog_loop(is_healthy, lambda: "3 jobs live"))
    try:
        assert await receive(systemd_socket) == "WATCHDOG=1\nSTATUS=3 jobs live"
        assert await receive(systemd_socket) == "WATCHDOG=1\nSTATUS=3 jobs live"
        healthy = False
        await wait_for(lambda: false_calls >= 1)
        pending(systemd_socket)  # pings sent before the flip
        # Every loop turn between the first and third unhealthy check sent nothing.
        await wait_for(lambda: false_calls >= 3)
        assert pending(systemd_socket) == []
        healthy = True
        assert await receive(systemd_socket) == "WATCHDOG=1\nSTATUS=3 jobs live"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_loop_returns_when_not_asked_for(systemd_socket: socket.socket,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # pings wanted from another pid
    await asyncio.wait_for(sdnotify.watchdog_loop(lambda: True), 10)
    assert pending(systemd_socket) == []


async def wait_for(check: Callable[[], bool], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)
