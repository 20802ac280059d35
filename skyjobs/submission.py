"""What a submit sends: the task document as the controller wants it, and the workdir and
local file mounts packed into one archive. Shared by the CLI, the demo and the tests."""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path
from typing import Any

from skyjobs.exceptions import SpecError
from skyjobs.spec import TaskSpec, read_task_document

ARCHIVE_EXCLUDES = {".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache"}


def build_archive(spec: TaskSpec) -> str | None:
    """The workdir and local file mounts as a base64 tar.gz, or None when there are none."""
    mounts = spec.local_mounts()
    if spec.workdir is None and not mounts:
        return None
    buf = io.BytesIO()

    def skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if Path(info.name).name in ARCHIVE_EXCLUDES else info

    try:
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            if spec.workdir:
                tar.add(spec.workdir, arcname="workdir", filter=skip)
            for index, source in enumerate(mounts.values()):
                tar.add(source, arcname=f"mounts/{index}", filter=skip)
    except OSError as err:  # an unreadable file, a socket, a file gone meanwhile
        raise SpecError(f"cannot pack {err.filename or 'the workdir'}: "
                        f"{err.strerror or err}") from None
    return base64.b64encode(buf.getvalue()).decode()


def raw_task(data: Any) -> Any:
    """The task document as sent to the controller (a loaded document, or a file's path)."""
    if isinstance(data, Path):
        data = read_task_document(data)
    # Paths were checked locally; the controller gets their contents in the archive.
    if isinstance(data, dict):
        data.pop("workdir", None)
        mounts = data.get("file_mounts") or {}
        if isinstance(mounts, dict):
            data["file_mounts"] = {k: v for k, v in mounts.items() if not isinstance(v, str)}
            data["file_mounts"].update({k: "(uploaded)" for k, v in mounts.items()
                                        if isinstance(v, str)})
    return data
