"""The fault run by command (the long mode; the figures of docs/reliability.md):

    .venv/bin/python -m tests.faults.run --kills 200 --db-restarts 5 --seed 15

Prints the seed first (a failing run is replayed with the same --seed) and the report last; exit 1 on any
invariant violation.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

from .harness import FaultPlan, run_faults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.run")
    defaults = FaultPlan()
    for f in fields(FaultPlan):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name))
    parser.add_argument("--keep", action="store_true", help="keep the run directory (server logs)")
    args = parser.parse_args(argv)
    plan = FaultPlan(**{f.name: getattr(args, f.name) for f in fields(FaultPlan)})
    if "--load-seconds" not in (argv or sys.argv):  # room for the faults: about 3 s per fault
        plan.load_seconds = max(plan.load_seconds, 3.0 * (plan.kills + plan.db_restarts * 3 + plan.redis_restarts
                                                           + plan.redis_flushes + plan.provider_faults))
    root = Path(tempfile.mkdtemp(prefix="gantry-faults-"))
    try:
        report = asyncio.run(run_faults(plan, root))
    finally:
        if not args.keep:
            import shutil  # noqa: PLC0415

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"run directory: {root}")
    print(report.summary())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
