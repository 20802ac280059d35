"""Run a real controller process whose cloud calls go through the fault injector.

Exactly what ``skyjobs --state-dir DIR controller`` does (config from the state dir and
``SKYJOBS_*``, logging, ``Controller(...).serve()``), except that the local provider is
wrapped in :class:`skyjobs.providers.faulty.FaultyProvider`, configured from the JSON in
``SKYJOBS_CHAOS_FAULTS``, for example::

    SKYJOBS_CHAOS_FAULTS='{"fail_before": 0.05, "fail_after": 0.05,
                           "ops": ["launch", "terminate"],
                           "script": [["terminate", "crash_before", 1]]}'

``crash_before``/``crash_after`` end this process with ``os._exit(137)`` around the cloud
call: the chaos benchmark restarts it on the same state directory.

    python bench/chaos_controller.py --state-dir DIR [--host H] [--port P]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from skyjobs.config import load_config  # noqa: E402
from skyjobs.controller.daemon import Controller  # noqa: E402
from skyjobs.logsetup import setup_logging  # noqa: E402
from skyjobs.providers.base import Provider  # noqa: E402
from skyjobs.providers.faulty import FaultPlan, FaultyProvider  # noqa: E402
from skyjobs.providers.local import LocalProvider  # noqa: E402

FAULTS_ENV = "SKYJOBS_CHAOS_FAULTS"


def plan_from_env() -> FaultPlan:
    raw = os.environ.get(FAULTS_ENV, "").strip()
    return FaultPlan.from_dict(json.loads(raw)) if raw else FaultPlan()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    # The faults replace the CLI's `--clouds`: only the local provider is wrapped.
    cfg = load_config(state_dir=args.state_dir.resolve(), host=args.host, port=args.port,
                      clouds="local")
    setup_logging(cfg.log_format)
    plan = plan_from_env()
    inner = LocalProvider(cfg.state_dir / "local-cloud", cfg.local_no_spot_zones)
    providers: dict[str, Provider] = {"local": FaultyProvider(inner, plan)}
    asyncio.run(Controller(cfg, providers=providers).serve())


if __name__ == "__main__":
    main()
