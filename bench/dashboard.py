"""Render time of the console dashboard (GET /, an admin logged in) with 100,000 items in
PostgreSQL: the acceptance of issue 8 is a median under 300 ms.

The script creates its own database (default fhirai_bench_dash; the name must contain 'bench'),
migrates it, and loads with COPY (about 30 s on 2 cores) a week of synthetic traffic:
- ~60% DICOM studies from six AE titles: most written back after a realistic pipeline (quiet
  period, de-identification, inference, report, write-back), some failed at a random stage, some
  with no model, a few stuck in flight, each with its timeline events (written_back twice, as the
  write-back path records it);
- ~35% HL7 v2 messages from four senders: processed, some failed, a few waiting;
- ~5% FHIR DiagnosticReports (a FhirResource and its ClinicalReport), most written back.
Times are spread uniformly over the last 7 days; the dashboard's default window (24 h) sees about
a seventh of them, its per-source and in-flight tables look at all of them. The names in the
rows are synthetic (BENCH^...).

Then it renders the page through django.test.Client in this process (no HTTP server: what is
measured is the view, its queries and the template), 3 warm-ups and 30 timed runs, and prints
the median, p95 and max in ms, the number of SQL queries of one render, and the time of
dashboard_context() alone. Exit status 1 when the median is 300 ms or more."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIMIT_MS = 300.0
AES = ("CT1", "CT2", "MR1", "CR1", "US1", "PACS")
AE_WEIGHTS = (30, 15, 20, 20, 10, 5)
SENDERS = ("RIS^HOSP", "EHR^HOSP", "LAB^HOSP", "ADT^HOSP")
MESSAGE_TYPES = ("ADT^A01", "ADT^A08", "ORM^O01", "ORU^R01")
STUDY_STEPS = ("complete", "deidentified", "queued", "inferred", "reported", "written_back")
IN_FLIGHT = ("receiving", "complete", "deidentified", "queued", "reported")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/fhirai_bench_dash")
    p.add_argument("--broker-url", default="redis://127.0.0.1:6379/13", help="for the queue depths panel")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmups", type=int, default=3)
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--reuse", action="store_true", help="use the database as a previous --keep run left it")
    p.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p.parse_args()


# --- the database ---------------------------------------------------------------------------------
def database_create(url: str) -> None:
    server, name = url.rsplit("/", 1)
    if "bench" not in name:
        raise SystemExit(f"{name}: this script drops its database; give one whose name contains 'bench'")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def database_drop(url: str) -> None:
    server, name = url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def copy_rows(conn: psycopg.Connection[Any], model: Any, rows: Iterable[dict[str, Any]]) -> int:
    """COPY rows (dicts by attribute name; the rest take the field's default) into model's table."""
    fields = list(model._meta.concrete_fields)
    defaults = {f.attname: f.get_default() for f in fields}
    columns = ", ".join(f'"{f.column}"' for f in fields)
    n = 0
    with conn.cursor() as cur, cur.copy(f'COPY "{model._meta.db_table}" ({columns}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([row.get(f.attname, defaults[f.attname]) for f in fields])
            n += 1
    return n


class Events:
    """Timeline events, gathered while the items are made, copied after them."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, str, datetime]] = []

    def add(self, kind: str, item_id: int, event: str, at: datetime) -> None:
        self.rows.append((kind, item_id, event, at))

    def dicts(self) -> Iterator[dict[str, Any]]:
        for i, (kind, item_id, event, at) in enumerate(self.rows, start=1):
            yield {
                "id": i,
                "item_kind": kind,
                "item_id": item_id,
                "event": event,
                "at": at,
                "detail": "bench",
            }


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0, sigma))


def studies(
    rng: random.Random, n: int, now: datetime, days: float, events: Events
) -> Iterator[dict[str, Any]]:
    for i in range(1, n + 1):
        first = now - timedelta(seconds=rng.uniform(0, days * 86400))
        age = (now - first).total_seconds()
        r = rng.random()
        if age < 900 and r < 0.5:
            state = rng.choice(IN_FLIGHT)
        elif r < 0.88:
            state = "written_back"
        elif r < 0.93:
            state = "failed"
        elif r < 0.97:
            state = "no_model"
        else:
            state = "queued"  # stuck: in the in-flight table
        events.add("study", i, "received", first)
        events.add("study", i, "acked", first)
        at = first + timedelta(seconds=rng.uniform(0.5, 20))  # the last instance
        last_received = at
        at += timedelta(seconds=rng.uniform(30, 90))  # the quiet period
        steps = {
            "written_back": STUDY_STEPS,
            "no_model": ("complete", "deidentified"),
            "failed": STUDY_STEPS[: rng.randint(1, 5)],
            "queued": STUDY_STEPS[:3],
            "receiving": (),
        }.get(state, STUDY_STEPS[: STUDY_STEPS.index(state) + 1] if state in STUDY_STEPS else ())
        for step in steps:
            at += timedelta(
                seconds={
                    "complete": 0,
                    "deidentified": _lognormal(rng, 4, 0.5),
                    "queued": 0.05,
                    "inferred": _lognormal(rng, 20, 0.6),
                    "reported": 0.5,
                    "written_back": _lognormal(rng, 0.8, 0.8),
                }[step]
            )
            events.add("study", i, step, at)
            if step == "written_back":
                events.add("study", i, step, at)  # per delivery, then on the state change
        if state == "failed":
            at += timedelta(seconds=rng.uniform(0.1, 30))
            events.add("study", i, "failed", at)
        elif state == "no_model":
            events.add("study", i, "skipped", at)
        yield {
            "id": i,
            "study_uid": f"1.2.826.0.1.3680043.10.999.{i}",
            "state": state,
            "state_changed_at": min(at, now) if state != "receiving" else first,
            "error": "bench: simulated failure" if state == "failed" else "",
            "patient_id": f"BENCH{i % 20000}",
            "issuer_of_patient_id": "BENCH",
            "patient_name": f"BENCH^PATIENT{i % 20000}",
            "accession_number": f"BA{i}",
            "study_description": "CT CHEST",
            "modalities": "CT",
            "calling_ae": rng.choices(AES, AE_WEIGHTS)[0],
            "instance_count": rng.randint(1, 400),
            "first_received_at": first,
            "last_received_at": min(last_received, now),
        }


def messages(
    rng: random.Random, n: int, now: datetime, days: float, events: Events
) -> Iterator[dict[str, Any]]:
    for i in range(1, n + 1):
        received = now - timedelta(seconds=rng.uniform(0, days * 86400))
        r = rng.random()
        state = "processed" if r < 0.95 else "failed" if r < 0.98 else "received"
        events.add("message", i, "received", received)
        events.add("message", i, "acked", received)
        processed_at = None
        if state == "processed":
            processed_at = received + timedelta(seconds=_lognormal(rng, 0.15, 0.7))
            events.add("message", i, "processed", processed_at)
        elif state == "failed":
            events.add("message", i, "failed", received + timedelta(seconds=0.2))
        kind = rng.choice(MESSAGE_TYPES)
        yield {
            "id": i,
            "sender": rng.choice(SENDERS),
            "control_id": f"BENCH{i}",
            "message_type": kind,
            "version": "2.5",
            "codec": "utf-8",
            "raw": f"MSH|^~\\&|BENCH|HOSP|||{received:%Y%m%d%H%M%S}||{kind}|BENCH{i}|P|2.5\r".encode(),
            "peer": "127.0.0.1:40000",
            "state": state,
            "error": "bench: simulated failure" if state == "failed" else "",
            "received_at": received,
            "processed_at": processed_at,
        }


def reports(rng: random.Random, n: int, now: datetime, days: float, events: Events) -> tuple[list, list]:
    resources, rows = [], []
    for i in range(1, n + 1):
        received = now - timedelta(seconds=rng.uniform(0, days * 86400))
        resources.append(
            {
                "id": i,
                "resource_type": "DiagnosticReport",
                "rid": f"bench-{i}",
                "version_id": 1,
                "last_updated": received,
                "content": json.dumps(
                    {"resourceType": "DiagnosticReport", "id": f"bench-{i}", "status": "final"}
                ),
            }
        )
        rows.append(
            {
                "id": i,
                "resource_id": i,
                "resource_version": 1,
                "status": "final",
                "text": "No acute findings.",
                "deid_blob_key": f"deid/bench-{i}",
                "received_at": received,
            }
        )
        events.add("report", i, "received", received)
        events.add("report", i, "deidentified", received + timedelta(seconds=0.3))
        if rng.random() < 0.8:
            events.add("report", i, "written_back", received + timedelta(seconds=_lognormal(rng, 3, 0.5)))
    return resources, rows


def load(url: str, n: int, days: float, seed: int) -> dict[str, int]:
    from fhirai.audit.models import TimelineEvent
    from fhirai.context.models import ClinicalReport
    from fhirai.ingest.models import Message, Study
    from fhirai.results.models import FhirResource

    rng = random.Random(seed)
    now = datetime.now(UTC)
    n_studies, n_messages = round(n * 0.60), round(n * 0.35)
    n_reports = n - n_studies - n_messages
    events = Events()
    counts: dict[str, int] = {}
    with psycopg.connect(url) as conn:
        counts["studies"] = copy_rows(conn, Study, studies(rng, n_studies, now, days, events))
        counts["messages"] = copy_rows(conn, Message, messages(rng, n_messages, now, days, events))
        resources, rows = reports(rng, n_reports, now, days, events)
        copy_rows(conn, FhirResource, resources)
        counts["reports"] = copy_rows(conn, ClinicalReport, rows)
        counts["timeline events"] = copy_rows(conn, TimelineEvent, events.dicts())
        for model in (Study, Message, FhirResource, ClinicalReport, TimelineEvent):
            table = model._meta.db_table
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM \"{table}\"))"
            )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return counts


# --- the measurement ------------------------------------------------------------------------------
def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
    }


def measure(runs: int, warmups: int) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from fhirai.ui.dashboard import dashboard_context

    user, _ = User.objects.get_or_create(
        username="bench-admin", defaults={"is_superuser": True, "is_staff": True}
    )
    client = Client()
    client.force_login(user)

    def get() -> tuple[float, bytes]:
        started = time.perf_counter()
        response = client.get("/")
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200 or b"<svg" not in response.content:
            raise SystemExit(f"GET / answered {response.status_code}, not the dashboard: is the view wired?")
        return elapsed, response.content

    for _ in range(warmups):
        get()
    page = [get()[0] for _ in range(runs)]
    context = []
    for _ in range(max(5, runs // 3)):
        started = time.perf_counter()
        dashboard_context()
        context.append((time.perf_counter() - started) * 1000)
    with CaptureQueriesContext(connection) as queries:
        _, body = get()
    return {
        "page_ms": _ms(page),
        "context_ms": _ms(context),
        "queries": len(queries.captured_queries),
        "slowest_queries": sorted(
            (
                {"ms": float(q["time"]) * 1000, "sql": " ".join(q["sql"].split())[:150]}
                for q in queries.captured_queries
            ),
            key=lambda q: -q["ms"],
        )[:3],
        "page_bytes": len(body),
        "runs": runs,
    }


def main() -> int:
    args = parse()
    os.environ.update(
        DJANGO_SETTINGS_MODULE="fhirai.settings",
        DATABASE_URL=args.database_url,
        CELERY_BROKER_URL=args.broker_url,
        FHIRAI_DATA_DIR=os.environ.get("FHIRAI_BENCH_DATA_DIR")
        or tempfile.mkdtemp(prefix="fhirai-bench-dash-"),
        FHIRAI_DEID_SECRET="bench",
        FHIRAI_ALLOWED_HOSTS="testserver",
        FHIRAI_LOG_LEVEL="WARNING",
    )
    import django
    from django.core.management import call_command

    loaded: dict[str, int] = {}
    try:
        if not args.reuse:
            database_create(args.database_url)
        django.setup()
        call_command("migrate", verbosity=0)
        if not args.reuse:
            started = time.perf_counter()
            loaded = load(args.database_url, args.items, args.days, args.seed)
            loaded["load seconds"] = round(time.perf_counter() - started)
        result = {"loaded": loaded, **measure(args.runs, args.warmups)}
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            database_drop(args.database_url)
    ok = result["page_ms"]["median"] < LIMIT_MS
    if args.json:
        print(json.dumps(result | {"ok": ok}, indent=2))
    else:
        if loaded:
            print("loaded: " + ", ".join(f"{v:,} {k}" for k, v in loaded.items()))
        page, ctx = result["page_ms"], result["context_ms"]
        print(
            f"GET / (dashboard, admin) x{result['runs']}: median {page['median']:.1f} ms, "
            f"p95 {page['p95']:.1f} ms, max {page['max']:.1f} ms; {result['queries']} SQL queries; "
            f"{result['page_bytes']:,} bytes"
        )
        print(f"dashboard_context() alone: median {ctx['median']:.1f} ms, p95 {ctx['p95']:.1f} ms")
        for q in result["slowest_queries"]:
            print(f"  {q['ms']:7.1f} ms  {q['sql']}")
        print(f"{'OK' if ok else 'TOO SLOW'}: the acceptance is a median under {LIMIT_MS:.0f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
