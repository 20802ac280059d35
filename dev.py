#!/usr/bin/env python3
"""Developer entry point that needs nothing but python3.

    python3 dev.py demo            run the local demo job (preempted, resumed, succeeded)
    python3 dev.py test [ARGS...]  run the whole test suite (extra ARGS go to pytest)

Both create ./.venv and install skyjobs with its test dependencies on first use (and again
whenever pyproject.toml changes).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".skyjobs-installed"


def ensure_venv() -> None:
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want and PY.exists():
        return
    if not PY.exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing skyjobs and its test dependencies into .venv", flush=True)
    pip = [str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        ensure_venv()
    except subprocess.CalledProcessError as err:
        print(f"dev.py: installing dependencies failed (exit {err.returncode})", file=sys.stderr)
        return 1
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if argv[0] == "demo":
        return subprocess.call([str(PY), "-m", "skyjobs", "demo", *argv[1:]], cwd=ROOT, env=env)
    code = subprocess.call([str(PY), "-m", "pytest", *argv[1:]], cwd=ROOT, env=env)
    if code == 5:
        # pytest's "no tests collected": never let an empty run pass as green.
        print("dev.py: pytest collected no tests; failing", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
