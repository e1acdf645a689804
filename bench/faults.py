"""The fault-injection harness of tests/faults/ for longer: several rounds, each a fresh site on its own
PostgreSQL cluster and redis-server, with many more fault points and more traffic than the CI run.
Prints each round's summary and the totals (fault points per scenario, items acknowledged, lost,
duplicated, refusals seen while storage was down); exits 1 when a round broke an invariant.

    .venv/bin/python bench/faults.py --rounds 3 --points 200
    .venv/bin/python bench/faults.py --seed 462761749 --points 80   # replay a CI run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--points", type=int, default=200, help="fault points per round")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first round (then +1 per round)")
    parser.add_argument(
        "--studies", type=int, default=0, help="CT studies per round (default: scaled to points)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import django

    django.setup()
    from tests.faults.test_faults import run_faults

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    scale = max(1.0, args.points / 50)
    totals: Counter[str] = Counter()
    failures = 0
    for round_no in range(args.rounds):
        started = time.monotonic()
        print(f"round {round_no + 1}: seed {seed + round_no}, {args.points} fault points", flush=True)
        with tempfile.TemporaryDirectory(prefix="fhirai-faults-") as root:
            try:
                summary = run_faults(
                    Path(root),
                    args.points,
                    seed + round_no,
                    studies=args.studies or int(8 * scale),
                    messages=int(50 * scale),
                    bundles=int(30 * scale),
                )
            except AssertionError as exc:
                failures += 1
                print(f"round {round_no + 1} (seed {seed + round_no}) FAILED: {str(exc)[:4000]}", flush=True)
                continue
        totals.update(summary["faults"])
        for kind, count in summary["acknowledged"].items():
            totals[f"acknowledged {kind}"] += count
        totals["lost"] += summary["lost"]
        if args.json:
            print(json.dumps(summary, default=str), flush=True)
        else:
            print(
                f"round {round_no + 1} (seed {seed + round_no}): {summary['fault_points']} fault points in "
                f"{time.monotonic() - started:.0f} s, acknowledged {summary['acknowledged']}, lost {summary['lost']}, "
                f"refusals {summary['refusals']}",
                flush=True,
            )
    print("totals:", json.dumps(dict(sorted(totals.items())), indent=1))
    print(f"rounds failed: {failures} of {args.rounds}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
