"""``skyjobs check`` with gcp enabled, in a real process against the fakes: where the
credentials come from (never what they are), the project, and a task's gs:// buckets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from tests.gcp.conftest import gcp_env


def check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SKYJOBS_", "GOOGLE_"))}
    full.update({"SKYJOBS_STATE_DIR": str(tmp_path / "state"), "NO_GCE_CHECK": "True",
                 "CLOUDSDK_CONFIG": "/nonexistent", **env})
    return subprocess.run([sys.executable, "-m", "skyjobs", "check", *args],
                          capture_output=True, text=True, env=full, timeout=60, cwd=ROOT)


def test_gcp_enabled_with_buckets_reachable_or_not(tmp_path: Path, gce: Any, gcs: Any) -> None:
    gcs.create_bucket("ckpt-ok")
    task = tmp_path / "t.yaml"
    task.write_text("resources:\n  cloud: gcp\n  instance_type: n2-standard-4\n"
                    "file_mounts:\n  /ok:\n    source: gs://ckpt-ok/run\n    mode: COPY\n"
                    "  /missing:\n    source: gs://no-such-bucket/run\n    mode: COPY\n"
                    "run: echo hi\n")
    r = check(tmp_path, str(task), SKYJOBS_CLOUDS="gcp,local", STORAGE_EMULATOR_HOST=gcs.url,
              **gcp_env(gce))
    lines = r.stdout.splitlines()
    assert r.returncode == 1, r.stdout + r.stderr  # the missing bucket would be refused
    assert "gcp: enabled in this machine's config" in lines
    assert any(line.startswith("gcp: credentials: anonymous") for line in lines), lines
    assert "gcp: project: skyjobs-test (SKYJOBS_GCP_PROJECT)" in lines
    assert any(line.startswith(f"bucket: {task}: file_mounts./ok: gs://ckpt-ok/run: reachable")
               for line in lines), lines
    assert any(line.startswith(f"bucket: FAIL: {task}: file_mounts./missing: ") and
               "does not exist" in line for line in lines), lines
    assert gcs.objects("ckpt-ok") == {}  # the probe object went again
    assert "Traceback" not in r.stderr


def test_a_key_file_is_named_by_its_source_never_shown(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    key = tmp_path / "sa.json"
    key.write_text(json.dumps({
        "type": "service_account", "project_id": "proj-from-key", "private_key_id": "abc123",
        "private_key": pem, "client_email": "runner@proj-from-key.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}))
    r = check(tmp_path, SKYJOBS_CLOUDS="gcp", GOOGLE_APPLICATION_CREDENTIALS=str(key))
    out = r.stdout + r.stderr
    assert "gcp: credentials: found: service-account key runner@proj-from-key" in r.stdout, out
    assert "gcp: project: proj-from-key (from the credentials)" in r.stdout
    assert "PRIVATE KEY" not in out and "abc123" not in out and pem[40:80] not in out
    # A named key file that cannot be used says which file, not what is in it.
    key.write_text('{"type": "service_account", "private_key": "SECRET-BITS"}')
    r = check(tmp_path, SKYJOBS_CLOUDS="gcp", GOOGLE_APPLICATION_CREDENTIALS=str(key))
    assert r.returncode == 1
    assert f"gcp: FAIL: credentials: cannot be read from GOOGLE_APPLICATION_CREDENTIALS={key}" \
        in r.stdout, r.stdout
    assert "SECRET-BITS" not in r.stdout + r.stderr
