"""How long each fuzz target runs. In CI (no environment) each target runs its own small example
count once. The long run (bench/fuzz.py) sets FHIRAI_FUZZ_EXAMPLES (examples per round) and
FHIRAI_FUZZ_SECONDS (rounds repeat, each with a fresh random seed, until the time is spent); with
FHIRAI_FUZZ_REPORT set, each target appends one JSON line: executions, rounds, failures."""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, note, settings

EXAMPLES = int(os.environ.get("FHIRAI_FUZZ_EXAMPLES", "0") or 0)
SECONDS = float(os.environ.get("FHIRAI_FUZZ_SECONDS", "0") or 0)
REPORT = os.environ.get("FHIRAI_FUZZ_REPORT", "")


def fuzz_target(name: str, *, ci: int, **strategies: Any) -> Callable[[Any], Any]:
    """@given(**strategies) with `ci` examples by default (the bounded CI run), or the long run's
    budget; counts the examples executed."""

    def decorate(test: Any) -> Any:
        counter = {"executions": 0}

        @functools.wraps(test)
        def counted(*args: Any, **kwargs: Any) -> Any:
            counter["executions"] += 1
            note(", ".join(f"{k}={v!r}"[:2000] for k, v in kwargs.items() if k in strategies))
            return test(*args, **kwargs)

        configured = settings(
            max_examples=EXAMPLES or ci,
            deadline=None,
            derandomize=False,
            database=None,
            print_blob=True,
            suppress_health_check=list(HealthCheck),
        )(given(**strategies)(counted))

        def run(*args: Any, **kwargs: Any) -> None:
            if not SECONDS:
                configured(*args, **kwargs)
                return
            started, rounds, failures = time.monotonic(), 0, []
            while time.monotonic() - started < SECONDS:
                rounds += 1
                try:
                    configured(*args, **kwargs)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # noqa: BLE001 - pytest.fail's Failed too: record, go on
                    failures.append("".join(traceback.format_exception_only(exc)).strip()[:3000])
            elapsed = time.monotonic() - started
            if REPORT:
                with open(REPORT, "a") as out:
                    record = {
                        "target": name,
                        "executions": counter["executions"],
                        "rounds": rounds,
                        "seconds": round(elapsed, 1),
                        "failures": failures,
                    }
                    out.write(json.dumps(record) + "\n")
            assert not failures, failures

        run.__name__ = test.__name__
        run.__qualname__ = test.__qualname__
        run.__module__ = test.__module__
        run.__doc__ = test.__doc__
        run.__signature__ = inspect.signature(configured)  # type: ignore[attr-defined]
        run.pytestmark = getattr(test, "pytestmark", [])  # type: ignore[attr-defined]
        return run

    return decorate
