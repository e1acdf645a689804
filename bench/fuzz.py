"""The long fuzz run: every target in tests/fuzz for a time budget each, with fresh random seeds
round after round, then a table of executions and failures per target.

Runs pytest once over tests/fuzz (the regression tests excluded) with FHIRAI_FUZZ_SECONDS,
FHIRAI_FUZZ_EXAMPLES and FHIRAI_FUZZ_REPORT set (tests/fuzz/budget.py reads them), on the same
real services as the test suite: PostgreSQL and Redis on 127.0.0.1 (DATABASE_URL, CELERY_BROKER_URL).
A failure is recorded (its shrunk example in the report) and the target goes on with a new seed.

    .venv/bin/python bench/fuzz.py --seconds 55 --examples 2000
    .venv/bin/python bench/fuzz.py --seconds 10 -k mllp
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=55.0, help="time budget per target")
    parser.add_argument("--examples", type=int, default=2000, help="examples per round (one random seed)")
    parser.add_argument("-k", default="", help="pytest -k expression to pick targets")
    parser.add_argument("--report", default="", help="keep the JSON lines here (default: a temporary file)")
    args = parser.parse_args()

    report = Path(args.report or tempfile.mkstemp(prefix="fhirai-fuzz-", suffix=".jsonl")[1])
    report.write_text("")
    env = {
        **os.environ,
        "FHIRAI_FUZZ_SECONDS": str(args.seconds),
        "FHIRAI_FUZZ_EXAMPLES": str(args.examples),
        "FHIRAI_FUZZ_REPORT": str(report),
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/fuzz",
        "--ignore=tests/fuzz/test_regressions.py",
        "-p",
        "no:cacheprovider",
        "-q",
        "--show-capture=no",
        "-W",
        "ignore",
    ]
    if args.k:
        command += ["-k", args.k]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started

    rows = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    print(f"{'target':36} {'executions':>11} {'rounds':>7} {'seconds':>8} {'exec/s':>8} {'failures':>9}")
    for row in rows:
        rate = row["executions"] / row["seconds"] if row["seconds"] else 0.0
        print(
            f"{row['target']:36} {row['executions']:>11} {row['rounds']:>7} {row['seconds']:>8.1f} "
            f"{rate:>8.1f} {len(row['failures']):>9}"
        )
    total = sum(r["executions"] for r in rows)
    failures = sum(len(r["failures"]) for r in rows)
    print(f"{'total':36} {total:>11} {'':>7} {elapsed:>8.1f} {'':>8} {failures:>9}")
    for row in rows:
        for failure in row["failures"]:
            print(f"\n--- {row['target']}\n{failure}")
    if result.returncode not in (0, 1) or not rows:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n")
    print(f"\nreport: {report}")
    return 1 if failures or result.returncode else 0


if __name__ == "__main__":
    raise SystemExit(main())
