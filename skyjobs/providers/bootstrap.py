"""The boot script that turns a fresh VM into a skyjobs node, on every cloud (docs/bootstrap.md).

EC2 passes it as user-data (cloud-init runs it as root on first boot), GCE as the
``startup-script`` metadata (google_metadata_script_runner runs it as root on every boot).
It writes the node's agent environment to a 0600 file, gets the agent and starts it under
systemd, so the agent outlives the script.

Getting the agent: by default the node downloads the controller's own node code as one
zipapp (``/agent/v1/attempts/<id>/agent.pyz``, with the attempt's credential, from the first
of ``SKYJOBS_CONTROLLER_URLS`` or ``SKYJOBS_CONTROLLER_URL`` that serves it), checks its
sha256 against ``SKYJOBS_AGENT_SHA256`` from this very script and runs it with the image's
python3: no package index, nothing installed, the exact version of the controller that
launched it. An operator's ``package_spec`` (a private index, a wheel URL) brings back a
venv and ``pip install <spec>`` instead.

The environment block is plain ``KEY='value'`` lines between fixed markers, readable by
systemd's EnvironmentFile, by ``.`` in bash, and by :func:`parse_agent_env` (test harnesses
boot agents with it).
"""

from __future__ import annotations

import re
import shlex

ETC_DIR = "/etc/skyjobs"
OPT_DIR = "/opt/skyjobs"
ENV_FILE = f"{ETC_DIR}/agent.env"
ENV_END = "SKYJOBS_ENV_END"
ENV_BEGIN = f"cat > {ENV_FILE} <<'{ENV_END}'"  # the line that opens the block, by default
# The env key that asks the boot script for Python modules beyond the standard library
# (space separated, e.g. "boto3" for s3:// COPY buckets); each comes from the distro's
# python3-<module> package, best effort. Set by the controller's launch_request.
MODULES_KEY = "SKYJOBS_NODE_PYTHON_MODULES"
# How long the node keeps trying to download the agent: a controller restart takes seconds,
# an upgrade maybe a minute or two; past this the node gives up and the controller's
# provisioning timeout recovers the attempt.
FETCH_SECONDS = 300

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)

# Runs as `python3 -I - DEST SECONDS` with the agent env exported: downloads the agent,
# refuses it unless its sha256 is the one the launch announced, installs it atomically.
# Never prints the token; honours SKYJOBS_CA_FILE as the agent does. The controllers are
# SKYJOBS_CONTROLLER_URLS (comma separated, owner first) or the one SKYJOBS_CONTROLLER_URL,
# as for the agent (skyjobs.node.client.controller_urls). A 401/403/404 will not change by
# waiting (the controllers share one database); anything else (connection refused while a
# controller restarts, a 5xx) moves on to the next controller, and a pass over all of them
# that got nothing is retried with backoff.
_FETCH = '''\
import hashlib, http.client, os, ssl, sys, time, urllib.error, urllib.request
dest, budget = sys.argv[1], float(sys.argv[2])
env = os.environ
want = env.get("SKYJOBS_AGENT_SHA256", "").strip().lower()
if len(want) != 64:
    sys.exit("skyjobs-bootstrap: no SKYJOBS_AGENT_SHA256: refusing an agent it cannot check")
many = env.get("SKYJOBS_CONTROLLER_URLS", "").strip()
bases = [b.strip().rstrip("/") for b in many.split(",")] if many else \
    [env.get("SKYJOBS_CONTROLLER_URL", "").strip().rstrip("/")]
bases = [b for b in bases if b]
if not bases or any(not b.lower().startswith(("http://", "https://")) for b in bases):
    sys.exit("skyjobs-bootstrap: SKYJOBS_CONTROLLER_URL(S): not http(s) URLs: %r" % bases)
urls = ["%s/agent/v1/attempts/%s/agent.pyz" % (b, env["SKYJOBS_ATTEMPT_ID"]) for b in bases]
ctx = ssl.create_default_context(cafile=env.get("SKYJOBS_CA_FILE") or None)
# No proxy, like the agent's own connection to the controller.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                     urllib.request.HTTPSHandler(context=ctx))
auth = {"Authorization": "Bearer " + env["SKYJOBS_AGENT_TOKEN"]}

def fetch(url):
    """The body, or why not when another controller or a later pass may give it."""
    try:
        with opener.open(urllib.request.Request(url, headers=auth), timeout=30) as resp:
            return resp.read()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403, 404):
            sys.exit("skyjobs-bootstrap: %s: HTTP %d: giving up" % (url, err.code))
        return "HTTP %d" % err.code
    except (OSError, http.client.HTTPException) as err:
        return str(err) or type(err).__name__

def fetch_any():
    """One pass over the controllers: the first body, or the last controller's why not."""
    for i, url in enumerate(urls):
        got = fetch(url)
        if isinstance(got, bytes) or i == len(urls) - 1:
            return url, got
        print("skyjobs-bootstrap: %s: %s; trying the next controller" % (url, got),
              file=sys.stderr, flush=True)

deadline, delay = time.monotonic() + budget, 1.0
while True:
    url, data = fetch_any()
    if isinstance(data, bytes):
        break
    if time.monotonic() + delay > deadline:
        sys.exit("skyjobs-bootstrap: %s: %s: gave up after %.0fs" % (url, data, budget))
    print("skyjobs-bootstrap: %s: %s; retrying in %.0fs" % (url, data, delay),
          file=sys.stderr, flush=True)
    time.sleep(delay)
    delay = min(delay * 2, 30.0)
got = hashlib.sha256(data).hexdigest()
if got != want:
    # The controller was upgraded since the launch, or the download was altered.
    sys.exit("skyjobs-bootstrap: agent.pyz has sha256 %s, the launch announced %s: "
             "not running it" % (got, want))
with open(dest + ".tmp", "wb") as fh:
    fh.write(data)
os.chmod(dest + ".tmp", 0o644)
os.replace(dest + ".tmp", dest)
print("skyjobs-bootstrap: agent %s installed at %s" % (got[:12], dest), file=sys.stderr)
'''


def render(env: dict[str, str], *, package_spec: str = "", agent_user: str = "",
           metadata_url: str, max_bytes: int | None, etc_dir: str = ETC_DIR,
           opt_dir: str = OPT_DIR, fetch_seconds: int = FETCH_SECONDS) -> str:
    """The boot script of one node; ``env`` is that node's agent environment.

    ``package_spec`` empty: the agent the controller serves, checked against
    ``env["SKYJOBS_AGENT_SHA256"]``; else ``pip install package_spec`` into a venv.
    ``metadata_url``: the instance metadata service, unless ``env`` names one.
    ``max_bytes``: the cloud's limit on the script (EC2 user-data: 16 KiB), or None.
    ``etc_dir``/``opt_dir``: where the env file and the agent go (tests point them into a
    temporary directory). Raises ValueError for what the script cannot carry."""
    env = {**env, "SKYJOBS_METADATA_URL": env.get("SKYJOBS_METADATA_URL", metadata_url)}
    for key, value in env.items():
        # One line per variable, or parse_agent_env and EnvironmentFile would read another
        # variable out of a value (splitlines also breaks on \r, \x0b, \x85...).
        if not _KEY.fullmatch(key) or value.splitlines() not in ([], [value]) or "\0" in value:
            raise ValueError(f"agent env {key!r}: not a plain NAME=value pair")
    modules = env.get(MODULES_KEY, "").split()
    for module in modules:
        if not _MODULE.fullmatch(module):  # it becomes part of a command line
            raise ValueError(f"agent env {MODULES_KEY}: {module!r} is not a module name")
    lines = "\n".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    user = shlex.quote(agent_user) if agent_user else "root"
    env_file = shlex.quote(f"{etc_dir}/agent.env")
    etc, opt = shlex.quote(etc_dir), shlex.quote(opt_dir)
    if package_spec:
        get_agent, agent_cmd = _pip_path(opt_dir, package_spec)
    else:
        get_agent, agent_cmd = _served_path(env_file, opt, opt_dir, fetch_seconds, modules)
    script = f"""#!/bin/bash
# skyjobs node bootstrap, generated by skyjobs.providers.bootstrap (docs/bootstrap.md).
set -euo pipefail
umask 077
mkdir -p {etc}
cat > {env_file} <<'{ENV_END}'
{lines}
{ENV_END}
if [ {user} != root ]; then chown {user} {env_file}; fi
# Only the env file is secret: what follows must be readable by the agent's user.
umask 022
say() {{ echo "skyjobs-bootstrap: $*" >&2; }}
pkg() {{  # best effort, with whichever package manager the image has
  if command -v apt-get >/dev/null; then
    apt-get -q -o DPkg::Lock::Timeout=300 update && DEBIAN_FRONTEND=noninteractive \\
      apt-get install -yq -o DPkg::Lock::Timeout=300 "$@"
  elif command -v dnf >/dev/null; then dnf install -yq "$@"
  elif command -v yum >/dev/null; then yum install -yq "$@"
  else return 1; fi
}}
# GCE runs this on every boot: a second run in one boot leaves the running agent alone.
if systemctl is-active --quiet skyjobs-agent 2>/dev/null; then
  say "skyjobs-agent is already running"; exit 0
fi
{get_agent}
home=$(getent passwd {user} | cut -d: -f6)
systemd-run --unit=skyjobs-agent --uid={user} --working-directory="$home" \\
  --setenv=HOME="$home" --property=EnvironmentFile={env_file} \\
  {agent_cmd}
"""
    if max_bytes is not None and len(script.encode()) > max_bytes:
        raise ValueError(f"boot script is {len(script.encode())} bytes, over the "
                         f"{max_bytes // 1024} KiB limit")
    return script


def _served_path(env_file: str, opt: str, opt_dir: str, fetch_seconds: int,
                 modules: list[str]) -> tuple[str, str]:
    """Shell that gets the controller-served agent, and the command that runs it."""
    pyz = shlex.quote(f"{opt_dir}/agent.pyz")
    # Any python3.11+ does (what the node code is written for); a package only if none is.
    get = f"""py=
find_py() {{
  for c in python3 python3.13 python3.12 python3.11; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'
    then py=$(command -v "$c"); return 0; fi
  done
  return 1
}}
find_py || {{ say "no python3.11+: installing python3"; pkg python3 || true; find_py; }} \\
  || {{ pkg python3.11 || true; find_py; }} || {{ say "no python3.11+ on this image"; exit 1; }}
install -d -m 0755 {opt}
( set -a; . {env_file}; exec "$py" -I - {pyz} {int(fetch_seconds)} ) <<'SKYJOBS_FETCH'
{_FETCH}SKYJOBS_FETCH"""
    for module in modules:
        package = "python3-" + module.split(".")[0].replace("_", "-")
        get += (f"\n\"$py\" -I -c 'import {module}' 2>/dev/null || pkg {package} >&2 "
                f"|| say \"could not install {package}: the job's buckets may fail\"")
    # -I: the agent runs in the job user's home; that home's .py files, ~/.local and
    # PYTHON* variables must not change which code the agent imports.
    return get, f'"$py" -I {pyz}'


def _pip_path(opt_dir: str, package_spec: str) -> tuple[str, str]:
    """Shell that pip-installs the operator's package spec into a venv (docs/bootstrap.md),
    and the command that runs its agent."""
    venv = shlex.quote(f"{opt_dir}/venv")
    get = f"""install -d -m 0755 {shlex.quote(opt_dir)}
python3 -m venv {venv} 2>/dev/null || {{
  if command -v apt-get >/dev/null; then pkg python3-venv python3-pip
  else pkg python3 python3-pip; fi
  python3 -m venv {venv}
}}
{venv}/bin/pip install --quiet --upgrade pip
{venv}/bin/pip install --quiet {shlex.quote(package_spec)}"""
    return get, f"{venv}/bin/python -m skyjobs agent"


def parse_agent_env(script: str) -> dict[str, str]:
    """The agent environment written by :func:`render` (the inverse of its env block)."""
    lines = script.splitlines()
    try:
        start = next(i for i, line in enumerate(lines)
                     if line.startswith("cat > ") and line.endswith(f" <<'{ENV_END}'")) + 1
        end = lines.index(ENV_END, start)
    except (StopIteration, ValueError):
        raise ValueError("user-data has no skyjobs agent environment block") from None
    env: dict[str, str] = {}
    for line in lines[start:end]:
        key, _, quoted = line.partition("=")
        parts = shlex.split(quoted)
        env[key] = parts[0] if parts else ""
    return env
