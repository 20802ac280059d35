"""The node agent as one file: a zipapp of the running controller's own node-side code.

Nodes do not pip-install skyjobs (docs/bootstrap.md): the boot script downloads this file
from the controller (``GET /agent/v1/attempts/<id>/agent.pyz``, with the attempt's own
credential), checks its sha256 against ``SKYJOBS_AGENT_SHA256`` from the launch's
environment and runs it with the image's ``python3``. So a node always runs exactly the
agent of the controller that launched it, and needs nothing but python3 and one request.

The archive holds only what the node imports (tests/test_architecture.py's NODE_MAY_IMPORT,
all standard library), taken from the installed package this process runs, and is built
deterministically (sorted entries, fixed timestamps and modes): the same code gives the
same bytes and so the same sha256, across restarts of one installation too. Building reads
a few dozen files, so it runs once per process, in a thread (:func:`load_async`).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import skyjobs

# What node code may import (checked by tests/test_architecture.py), as package paths.
NODE_PACKAGES = ("skyjobs/node", "skyjobs/checkpoint")
NODE_FILES = ("skyjobs/__init__.py", "skyjobs/exceptions.py", "skyjobs/fsutil.py")
# zip's earliest date: no build time in the archive, so equal code gives equal bytes.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = '''\
"""skyjobs node agent {version}, served by the controller (docs/bootstrap.md)."""
import sys

# The node code is written for the Python the project requires; fail with one line, not
# with a SyntaxError from deep inside, on an image whose python3 is older.
if sys.version_info < (3, 11):
    sys.exit("skyjobs agent: needs Python 3.11+, found " + sys.version.split()[0])

from skyjobs.node.agent import main

main()
'''


@dataclass(frozen=True)
class AgentDist:
    data: bytes  # the zipapp, as served
    sha256: str  # hex digest of data: what SKYJOBS_AGENT_SHA256 carries
    version: str  # skyjobs.__version__ of the code inside
    files: tuple[str, ...]  # archive entries, in order


def source_files(root: Path) -> list[tuple[str, Path]]:
    """(archive name, file) for every node-side module under ``root`` (the directory that
    holds the ``skyjobs`` package), sorted by name."""
    out: dict[str, Path] = {}
    for name in NODE_FILES:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"agent dist: {path} is missing from the installed skyjobs")
        out[name] = path
    for pkg in NODE_PACKAGES:
        base = root / pkg
        if not (base / "__init__.py").is_file():
            raise FileNotFoundError(f"agent dist: {base} is not a package")
        for path in base.rglob("*.py"):
            if "__pycache__" not in path.parts:
                out[path.relative_to(root).as_posix()] = path
    return sorted(out.items())


def build(root: Path | None = None) -> AgentDist:
    """The zipapp of the node-side code under ``root`` (default: the running skyjobs).

    Blocking file I/O: call it from a thread (:func:`load_async`), not the event loop."""
    root = root if root is not None else Path(skyjobs.__file__).resolve().parent.parent
    entries = [(name, path.read_bytes()) for name, path in source_files(root)]
    entries.append(("__main__.py", MAIN.format(version=skyjobs.__version__).encode()))
    entries.sort()
    buf = io.BytesIO()
    buf.write(SHEBANG)  # as zipapp writes it; zip readers skip a prefix
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.create_system = 3  # unix, whatever the controller runs on
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=9)
    data = buf.getvalue()
    return AgentDist(data, hashlib.sha256(data).hexdigest(), skyjobs.__version__,
                     tuple(name for name, _ in entries))


_lock = threading.Lock()
_cached: AgentDist | None = None


def load() -> AgentDist:
    """The running version's zipapp, built on the first call of this process only.

    A controller serves the code it was started with: an upgrade of the installed package
    under a running controller changes nothing until it restarts (the sha256 its launches
    announced stays true)."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = build()
        return _cached


async def load_async() -> AgentDist:
    """:func:`load` off the event loop (the first call reads files)."""
    return _cached if _cached is not None else await asyncio.to_thread(load)
