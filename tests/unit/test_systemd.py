"""The systemd unit: lint it with systemd-analyze and check the directives we rely on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "skyjobs-controller.service"
ENV_EXAMPLE = ROOT / "systemd" / "controller.env.example"


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def an_existing_executable() -> str:
    # verify fails when ExecStart's binary is missing, and /usr/local/bin/skyjobs is not
    # installed here: point it at this checkout's entry point (or any executable) instead.
    script = Path(sys.executable).parent / "skyjobs"
    return str(script) if os.access(script, os.X_OK) else "/bin/true"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/skyjobs controller" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/usr/local/bin/skyjobs", an_existing_executable()))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    # Only a missing binary makes verify fail; unknown keys and bad values are warnings
    # on stderr. So any output at all is a failure.
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """Guards the test above: a misspelt key must produce output, or silence proves nothing."""
    unit = tmp_path / UNIT.name
    text = UNIT.read_text().replace("/usr/local/bin/skyjobs", an_existing_executable())
    unit.write_text(text.replace("KillMode=process", "KilMode=process"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert "KilMode" in proc.stdout + proc.stderr


@pytest.mark.parametrize(("key", "value"), [
    ("Type", "notify"),
    ("NotifyAccess", "main"),
    ("WatchdogSec", "30"),
    ("Restart", "on-failure"),
    ("KillMode", "process"),
    ("StateDirectory", "skyjobs"),
    ("Environment", "SKYJOBS_STATE_DIR=/var/lib/skyjobs"),
    ("EnvironmentFile", "-/etc/skyjobs/controller.env"),
    ("User", "skyjobs"),
    ("Group", "skyjobs"),
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ReadWritePaths", "/var/lib/skyjobs"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("WantedBy", "multi-user.target"),
])
def test_unit_has_directive(key: str, value: str) -> None:
    assert value in directives(UNIT.read_text()).get(key, [])


def test_unit_bounds_restart_and_stop() -> None:
    d = directives(UNIT.read_text())
    assert "DynamicUser" not in d  # state must keep one owner across restarts
    assert int(d["RestartSec"][0]) > 0
    # The daemon's own shutdown bound is 10 s; systemd must wait longer before SIGKILL.
    assert int(d["TimeoutStopSec"][0]) > 10
    assert d["ExecStart"] == ["/usr/local/bin/skyjobs controller"]


def test_env_example_only_sets_known_settings() -> None:
    from skyjobs.config import ControllerConfig

    known = {f"SKYJOBS_{name.upper()}" for name in ControllerConfig.model_fields}
    names = re.findall(r"^#?(SKYJOBS_[A-Z_]+)=", ENV_EXAMPLE.read_text(), flags=re.M)
    assert names, "the example documents no settings"
    assert set(names) <= known
