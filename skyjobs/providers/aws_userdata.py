"""User-data that turns a fresh EC2 instance into a skyjobs node.

The boot script is the one every cloud shares (:mod:`skyjobs.providers.bootstrap`,
docs/bootstrap.md): cloud-init runs it as root on first boot; it writes the node's agent
environment to a 0600 file, downloads the controller's agent (checked by sha256) or, with a
package spec, pip-installs it, and starts the agent under systemd. Here: EC2's metadata
address and its 16 KiB cap on user-data. The env markers and :func:`parse_agent_env` stay
importable from this module for the test harnesses.
"""

from __future__ import annotations

from skyjobs.providers import bootstrap
from skyjobs.providers.bootstrap import ENV_BEGIN, ENV_END, ENV_FILE, parse_agent_env

__all__ = ["ENV_BEGIN", "ENV_END", "ENV_FILE", "MAX_USER_DATA", "METADATA_URL", "VENV",
           "parse_agent_env", "render"]

VENV = f"{bootstrap.OPT_DIR}/venv"  # only with a package spec
METADATA_URL = "http://169.254.169.254"
MAX_USER_DATA = 16 * 1024  # EC2's limit, before base64


def render(env: dict[str, str], package_spec: str = "", agent_user: str = "",
           metadata_url: str = METADATA_URL) -> str:
    """The user-data of one node; ``env`` is that node's agent environment. An empty
    ``package_spec`` runs the agent the controller serves (the default)."""
    return bootstrap.render(env, package_spec=package_spec, agent_user=agent_user,
                            metadata_url=metadata_url, max_bytes=MAX_USER_DATA)
