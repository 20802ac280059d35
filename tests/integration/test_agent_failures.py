"""What a real agent does with workdirs and scripts that broke it before: it runs what it
can and reports what it cannot, so a job never loops on a node that cannot start it."""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path
from typing import Any

import yaml

from skyjobs.spec import load_task
from skyjobs.submission import build_archive
from tests.conftest import task

SHORT = {"SKYJOBS_MAX_LAUNCH_ROUNDS": "2"}


def test_a_workdir_with_an_absolute_symlink_runs(controller: Any, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "venv" / "bin").mkdir(parents=True)
    (work / "venv" / "bin" / "python").symlink_to("/bin/sh")  # as a virtualenv has
    (work / "hello.txt").write_text("hi from the workdir\n")
    doc = task("cat hello.txt; test -L venv/bin/python && echo link-kept",
               workdir=str(work))
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc))
    ctl = controller(**SHORT)
    job_id = int(ctl.client.post("/api/v1/jobs", {
        "task": doc, "source": str(path), "archive": build_archive(load_task(path))})["id"])
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED", "FAILED_NO_RESOURCE", timeout=60)
    assert done["status"] == "SUCCEEDED", (done, ctl.logs(job_id, 1))
    log = ctl.logs(job_id, 1)
    assert "hi from the workdir" in log and "link-kept" in log


def _hostile_archive() -> str:
    """A link out of the workdir, then a file written through it: the agent must refuse
    the file (never write outside the workdir) and say so, not die silently."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("workdir/out")
        link.type, link.linkname = tarfile.SYMTYPE, "/tmp"
        tar.addfile(link)
        data = b"should never land in /tmp\n"
        member = tarfile.TarInfo("workdir/out/skyjobs-escape-test.txt")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def test_an_archive_the_agent_cannot_unpack_fails_setup_with_its_reason(
        controller: Any) -> None:
    ctl = controller(**SHORT)
    job_id = int(ctl.client.post("/api/v1/jobs", {
        "task": task("echo never"), "archive": _hostile_archive()})["id"])
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED", "FAILED_NO_RESOURCE", timeout=60)
    assert done["status"] == "FAILED" and "setup failed" in done["reason"], done
    assert done["attempts"] == 1 and done["recoveries"] == 0
    assert "agent error in setup" in ctl.logs(job_id, 1)
    assert any("agent error" in (e["reason"] or "") and "Error" in (e["reason"] or "")
               for e in ctl.events(job_id))
    assert not Path("/tmp/skyjobs-escape-test.txt").exists()


def test_a_run_script_longer_than_one_argument_may_be_runs(controller: Any) -> None:
    body = "\n".join(f"x{i}=1" for i in range(40_000))  # ~300 KiB, over MAX_ARG_STRLEN
    ctl = controller(**SHORT)
    job_id = ctl.submit(task(f"{body}\necho long-script-ok"))
    done = ctl.wait_status(job_id, "SUCCEEDED", "FAILED", "FAILED_NO_RESOURCE", timeout=60)
    assert done["status"] == "SUCCEEDED", done
    assert "long-script-ok" in ctl.logs(job_id, 1)
