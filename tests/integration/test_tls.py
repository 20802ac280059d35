"""The API over TLS: the CLI client and the agents verify the controller's certificate."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from skyjobs.client import Client
from skyjobs.exceptions import ControllerUnavailableError
from tests.conftest import task

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def make_cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_jobs_run_over_tls_and_plain_http_is_refused(controller: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = make_cert(tmp_path)
    monkeypatch.setenv("SKYJOBS_CA_FILE", str(cert))
    ctl = controller(SKYJOBS_TLS_CERT=str(cert), SKYJOBS_TLS_KEY=str(key),
                     SKYJOBS_CA_FILE=str(cert))
    assert ctl.client.url.startswith("https://127.0.0.1:")
    job_id = ctl.submit(task("echo over-tls"))
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert done["status"] == "SUCCEEDED"
    assert "over-tls" in ctl.logs(job_id, 1)
    plain = Client(ctl.client.url.replace("https://", "http://"), ctl.client.token, timeout=5)
    with pytest.raises(ControllerUnavailableError):
        plain.get("/api/v1/jobs")
    monkeypatch.delenv("SKYJOBS_CA_FILE")
    untrusted = Client(ctl.client.url, ctl.client.token, timeout=5)
    with pytest.raises(ControllerUnavailableError):
        untrusted.get("/api/v1/jobs")  # an unknown certificate is not trusted
