"""Files the controller writes: private from the first byte, replaced atomically, durable.

The state directory holds task secrets (in the store), the API token, agents' credentials
and job logs. A file created 0644 and chmod-ed afterwards is readable for an instant, and a
file written in place is half-written after a crash; every writer goes through here instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

PRIVATE_UMASK = 0o077
# Bucket syncs skip files with this suffix: a half-written temporary is never copied on.
TMP_SUFFIX = ".skyjobs-tmp"


def private_umask() -> int:
    """Make everything this process creates from now on 0600/0700; returns the old umask.

    Called once at controller start, before any file of the state dir is opened (SQLite's
    WAL and SHM files are created by the library and take the umask, not a mode we pass).
    """
    return os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """Create the directory (and parents) 0700; tighten it if it exists and is wider."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write a file so that readers see the old content or the new, never a mix, and a crash
    right after the call returns cannot lose it (file and directory are fsynced).

    The temporary name is unique per call, so concurrent writers of one path never share
    (and truncate) one temporary file; the last rename wins.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_copy(src: Path, dst: Path) -> tuple[int, int]:
    """Copy a file (content and times) the same way: all or nothing, durable on return.

    Returns the (size, mtime_ns) of what was copied. Content and times come from the one
    open file: a writer that replaces ``src`` meanwhile (a job checkpointing while its
    bucket syncs) must not leave the copy with the old content under the new mtime, which
    would make it look up to date for ever.
    """
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            st = os.fstat(fin.fileno())
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dst.parent)
    return st.st_size, st.st_mtime_ns


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
