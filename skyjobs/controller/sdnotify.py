"""systemd notification protocol without a library: one datagram to ``$NOTIFY_SOCKET``.

``READY=1`` once the controller serves, ``STOPPING=1`` on shutdown, and ``WATCHDOG=1``
at half of ``WatchdogSec`` for as long as the daemon is healthy. Outside systemd (no
``NOTIFY_SOCKET``) every call is a cheap no-op, so the daemon calls these unconditionally.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger("skyjobs.sdnotify")


def _address(path: str) -> str:
    # A leading '@' names a Linux abstract socket, whose real name starts with a NUL byte.
    return "\0" + path[1:] if path.startswith("@") else path


def notify(message: str) -> bool:
    """Send one notification (e.g. ``"READY=1\\nSTATUS=running"``); True if it was sent."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), _address(path))
        except OSError as err:
            # systemd gone or the socket not ours: never let this take the daemon down.
            log.warning("sd_notify failed", error=str(err))
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between pings when systemd asked for them, else None.

    Half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) recommends. ``WATCHDOG_PID``,
    when set, names the process that must ping: a child that inherited the environment
    (an agent of a local instance) must not ping for the controller.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


async def watchdog_loop(is_healthy: Callable[[], bool],
                        status: Callable[[], str] | None = None) -> None:
    """Ping the watchdog while ``is_healthy()``; return at once if there is no watchdog.

    An unhealthy daemon stops pinging on purpose, so systemd restarts it after WatchdogSec.
    The ping also proves the event loop itself is alive: a blocked loop never gets here.
    """
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if is_healthy():
            message = "WATCHDOG=1"
            if status is not None:
                message += f"\nSTATUS={status()}"
            notify(message)
        else:
            log.warning("unhealthy: not pinging the systemd watchdog")
        await asyncio.sleep(interval)
