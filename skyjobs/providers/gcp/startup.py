"""The startup script that turns a fresh GCE VM into a skyjobs node.

The same boot path as EC2's user-data (``skyjobs.providers.bootstrap``): the node's agent
environment in a 0600 file, the agent fetched from the controller and checked by hash, then
started under systemd. GCE runs ``startup-script`` metadata as root on every boot; a Spot VM
deleted on preemption never boots twice, and the agent unit is idempotent for the rest.
"""

from __future__ import annotations

from skyjobs.providers import bootstrap

METADATA_URL = "http://metadata.google.internal"
# GCE caps one metadata value at 256 KiB; our script is a few KiB.
MAX_SCRIPT = 256 * 1024


def render(env: dict[str, str], *, package_spec: str = "", agent_user: str = "") -> str:
    """One node's startup script; ``env`` is that node's agent environment."""
    env = {"SKYJOBS_CLOUD": "gcp", **env}
    return bootstrap.render(env, package_spec=package_spec, agent_user=agent_user,
                            metadata_url=METADATA_URL, max_bytes=MAX_SCRIPT)
