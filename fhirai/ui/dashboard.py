"""The console dashboard's numbers: items received, acknowledged, completed and failed per source
kind and hour, what is in flight now, per-source totals, queue depths, workers (and their GPUs),
and the end-to-end latency. Pseudonymous aggregates only: counts, states, AE titles and HL7
sender names, never a patient.

Everything comes from about ten GROUP BY queries, whatever the number of items (the page must
render in under 300 ms with 100,000 items: bench/dashboard.py):

- received: the item tables (Study.first_received_at, Message.received_at, ClinicalReport
  received_at for FHIR DiagnosticReports), one query each, grouped by hour, source and state:
  exact, where counting `received` timeline events would count a study again when an order is
  linked to it or a new revision opens;
- completed: studies done (written back) and messages processed, by the hour that happened (the
  latency query counts them anyway), where timeline events would count a study once per
  destination; FHIR reports, which have no state, by their written_back events;
- acknowledged and failed: timeline events, one query, distinct items per hour (an item that
  fails in two different hours counts in both);
- latency: studies from first receipt to their final write-back (state_changed_at of a done
  study), messages from receipt to processed_at: percentile_cont on PostgreSQL (per hour and
  overall in one ROLLUP query), in Python elsewhere (the embedded SQLite product has few items);
- queue depths: the health probe, cached and refreshed off the request thread (with the broker
  down it blocks for seconds; the page shows the last answer instead of waiting for it).
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, connections
from django.db.models import Case, CharField, Count, Q, QuerySet, Value, When
from django.db.models.functions import TruncHour
from django.utils import timezone
from django.utils.safestring import SafeString

from fhirai.audit.models import TimelineEvent
from fhirai.audit.timeline import Event
from fhirai.context.models import ClinicalReport
from fhirai.ingest.models import Message, MessageState, Study, StudyState
from fhirai.ops.models import WorkerStatus
from fhirai.ui.svg import Series, bar_chart, line_chart

KINDS = {"study": "DICOM studies", "message": "HL7 v2 messages", "report": "FHIR reports"}
MEASURES = ("received", "acked", "completed", "failed")
MEASURE_LABELS = {
    "received": "received",
    "acked": "acknowledged",
    "completed": "completed",
    "failed": "failed",
}
MEASURE_COLOURS = {"received": "#1f5fbf", "acked": "#8fb3ff", "completed": "#1b7f3b", "failed": "#b3261e"}
# A study is done when written back (the state may be renamed `done`: both count).
STUDY_DONE = tuple(s.value for s in StudyState if s.name in ("DONE", "WRITTEN_BACK"))
STUDY_FAILED = StudyState.FAILED.value
STUDY_ENDED = (*STUDY_DONE, STUDY_FAILED, *(s.value for s in StudyState if s.name == "NO_MODEL"))
WORKER_UP_SECONDS = 60
WORKER_LIST_SINCE = timedelta(days=1)
MAX_HOURS = 24 * 14


# --- hours ----------------------------------------------------------------------------------------
def _buckets(now: datetime, hours: int) -> list[datetime]:
    """The starts of the last `hours` local hours, oldest first, the current (partial) one last."""
    current = timezone.localtime(now).replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    return [current - timedelta(hours=hours - 1 - i) for i in range(hours)]  # in UTC: no DST surprises


def _key(moment: datetime) -> int:
    return int(moment.timestamp())


def _label(moment: datetime, hours: int) -> str:
    local = timezone.localtime(moment)
    return local.strftime("%H:00") if hours <= 24 else local.strftime("%d %b %H:00")


# --- counts ---------------------------------------------------------------------------------------
def _received(
    since: datetime, until: datetime
) -> tuple[dict[str, dict[int, int]], list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Per kind: received per hour; per source: received/completed/failed/in progress of the items
    received in the window (their state now); per kind: items by state now."""
    hourly: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    sources: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    states: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    queries: list[tuple[str, QuerySet[Any], str, str]] = [
        ("study", Study.objects.all(), "first_received_at", "calling_ae"),
        ("message", Message.objects.all(), "received_at", "sender"),
    ]
    for kind, qs, at, source in queries:
        rows = (
            qs.filter(**{f"{at}__gte": since, f"{at}__lt": until})
            .annotate(hour=TruncHour(at))
            .values("hour", source, "state")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in rows:
            n, state = row["n"], row["state"]
            hourly[kind][_key(row["hour"])] += n
            states[kind][state] += n
            counts = sources[(kind, row[source] or "(none)")]
            counts["received"] += n
            if state in (*STUDY_DONE, MessageState.PROCESSED.value):
                counts["completed"] += n
            elif state == "failed":
                counts["failed"] += n
            elif state not in STUDY_ENDED:
                counts["in_progress"] += n
    rows = (
        ClinicalReport.objects.filter(resource__isnull=False, received_at__gte=since, received_at__lt=until)
        .annotate(hour=TruncHour("received_at"))
        .values("hour")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in rows:
        hourly["report"][_key(row["hour"])] += row["n"]
        sources[("report", "FHIR DiagnosticReport")]["received"] += row["n"]
    table = [
        {"kind": kind, "kind_label": KINDS[kind], "source": source}
        | {m: c.get(m, 0) for m in ("received", "completed", "failed", "in_progress")}
        for (kind, source), c in sources.items()
    ]
    table.sort(key=lambda r: (list(KINDS).index(r["kind"]), -r["received"], r["source"]))
    return hourly, table, states


def _events(since: datetime, until: datetime) -> dict[str, dict[str, dict[int, int]]]:
    """kind -> measure -> hour -> distinct items with that event: acknowledged and failed for
    every kind, completed (written back) for FHIR reports, which have no state of their own."""
    measure = Case(
        When(event=Event.ACKED.value, then=Value("acked")),
        When(event=Event.FAILED.value, then=Value("failed")),
        default=Value("completed"),
        output_field=CharField(),
    )
    rows = (
        TimelineEvent.objects.filter(
            # (written this way, not as an OR of two event sets, PostgreSQL reads the index alone)
            Q(item_kind="report") | ~Q(event=Event.WRITTEN_BACK.value),
            event__in=[Event.ACKED.value, Event.FAILED.value, Event.WRITTEN_BACK.value],
            at__gte=since,
            at__lt=until,
        )
        .annotate(hour=TruncHour("at"), measure=measure)
        .values("item_kind", "measure", "hour")
        .annotate(n=Count("item_id", distinct=True))
        .order_by()
    )
    out: dict[str, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for row in rows:
        out[row["item_kind"]][row["measure"]][_key(row["hour"])] += row["n"]
    return out


def _open_items() -> list[dict[str, Any]]:
    """Items not finished now, whenever received: what the pipeline still owes (by state)."""
    open_states = [s.value for s in StudyState if s.value not in STUDY_ENDED]
    rows = [
        {"kind_label": KINDS["study"], "state": r["state"], "n": r["n"]}
        for r in Study.objects.filter(state__in=open_states)
        .values("state")
        .annotate(n=Count("id"))
        .order_by()
    ]
    pending = Message.objects.filter(state=MessageState.RECEIVED.value).count()
    if pending:
        rows.append({"kind_label": KINDS["message"], "state": MessageState.RECEIVED.value, "n": pending})
    order = {s: i for i, s in enumerate(open_states)}
    rows.sort(key=lambda r: (r["kind_label"] != KINDS["study"], order.get(r["state"], 99)))
    return rows


# --- latency --------------------------------------------------------------------------------------
def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks: what percentile_cont computes."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * (position - lower)


LATENCY_SQL = """
SELECT date_trunc('hour', t.ended AT TIME ZONE %s),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY t.seconds),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY t.seconds),
       count(*)
  FROM (SELECT {end} AS ended, EXTRACT(EPOCH FROM ({end} - {start}))::double precision AS seconds
          FROM {table} WHERE state = ANY(%s) AND {end} >= %s AND {end} < %s) AS t
 GROUP BY ROLLUP (1)
"""


def _latency_postgresql(
    model: Any, start: str, end: str, states: list[str], since: datetime, until: datetime
) -> tuple[dict[str, Any], dict[int, tuple[float | None, float | None, int]]]:
    """One query: per hour and (the ROLLUP row, hour NULL) overall."""
    quote = connection.ops.quote_name
    sql = LATENCY_SQL.format(table=quote(model._meta.db_table), start=quote(start), end=quote(end))
    zone = timezone.get_current_timezone()
    with connection.cursor() as cursor:
        cursor.execute(sql, [timezone.get_current_timezone_name(), states, since, until])
        rows = cursor.fetchall()
    overall: dict[str, Any] = {"p50": None, "p95": None, "n": 0}
    hourly = {}
    for hour, p50, p95, n in rows:
        if hour is None:
            overall = {"p50": p50, "p95": p95, "n": n}
        else:
            hourly[_key(timezone.make_aware(hour, zone))] = (p50, p95, n)
    return overall, hourly


def _latency_python(
    model: Any, start: str, end: str, states: list[str], since: datetime, until: datetime
) -> tuple[dict[str, Any], dict[int, tuple[float | None, float | None, int]]]:
    """The same numbers computed here (SQLite has no percentile_cont; the embedded product is small)."""
    qs = model.objects.filter(**{"state__in": states, f"{end}__gte": since, f"{end}__lt": until})
    per_hour: dict[int, list[float]] = defaultdict(list)
    everything: list[float] = []
    for began, ended in qs.order_by().values_list(start, end).iterator(chunk_size=5000):
        value = (ended - began).total_seconds()
        everything.append(value)
        per_hour[_key(timezone.localtime(ended).replace(minute=0, second=0, microsecond=0))].append(value)
    everything.sort()
    overall = {"p50": percentile(everything, 0.5), "p95": percentile(everything, 0.95), "n": len(everything)}
    hourly = {}
    for key, values in per_hour.items():
        values.sort()
        hourly[key] = (percentile(values, 0.5), percentile(values, 0.95), len(values))
    return overall, hourly


def _latency(
    model: Any, start: str, end: str, states: Iterable[str], buckets: list[datetime]
) -> dict[str, Any]:
    """p50/p95 (seconds) of end - start over the items in `states` whose end is in the window,
    overall and per hour of `end` (hourly: (p50, p95, items) per bucket)."""
    since, until = buckets[0], buckets[-1] + timedelta(hours=1)
    compute = _latency_postgresql if connection.vendor == "postgresql" else _latency_python
    overall, hourly = compute(model, start, end, list(states), since, until)
    return {
        "p50": overall["p50"],
        "p95": overall["p95"],
        "n": overall["n"] or 0,
        "p50_text": duration_text(overall["p50"]),
        "p95_text": duration_text(overall["p95"]),
        "hourly": [hourly.get(_key(b), (None, None, 0)) for b in buckets],
    }


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- queues (cached broker probe) -----------------------------------------------------------------
QUEUE_TTL = 10.0  # seconds an answer is shown before it is refreshed
QUEUE_WAIT = 0.3  # how long a render waits for a refresh when it has no answer at all


def _probe() -> dict[str, Any]:
    from fhirai.api.health import broker_check  # imports the Celery app: only when asked

    broker, queues = broker_check()  # the broker only: the page's own queries say the database works
    return {"broker": broker, "queues": queues}


class _QueueCache:
    """The last broker answer and when it came; one refresh at a time, in a daemon thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: dict[str, Any] | None = None
        self.at = 0.0
        self.thread: threading.Thread | None = None

    def _refresh(self, probe: Callable[[], dict[str, Any]]) -> None:
        try:
            value = probe()
        except Exception as exc:  # noqa: BLE001 - the dashboard shows it, nothing else depends on it
            value = {"broker": f"unavailable: {type(exc).__name__}", "queues": {}}
        finally:
            connections.close_all()  # this thread's own connection (the probe's SELECT 1)
        with self.lock:
            self.value, self.at = value, time.monotonic()

    def get(self, probe: Callable[[], dict[str, Any]], *, wait: float = QUEUE_WAIT) -> dict[str, Any] | None:
        with self.lock:
            fresh = self.value is not None and time.monotonic() - self.at < QUEUE_TTL
            if not fresh and (self.thread is None or not self.thread.is_alive()):
                self.thread = threading.Thread(
                    target=self._refresh, args=(probe,), name="dashboard-queues", daemon=True
                )
                self.thread.start()
            thread, value = self.thread, self.value
        if value is None and thread is not None:
            thread.join(wait)
            with self.lock:
                value = self.value
        return value

    def clear(self) -> None:
        with self.lock:
            self.value, self.at = None, 0.0


_queues = _QueueCache()


def queue_status() -> dict[str, Any]:
    """{broker, queues: [{name, depth}], checked} from the cached probe (checked: False while the
    first answer is still coming)."""
    value = _queues.get(_probe)
    if value is None:
        return {"broker": "checking", "queues": [], "checked": False}
    depths = value.get("queues") or {}
    return {
        "broker": value.get("broker", "unknown"),
        "queues": [{"name": name, "depth": depth} for name, depth in depths.items()],
        "checked": True,
    }


# --- workers --------------------------------------------------------------------------------------
def _workers(now: datetime) -> list[dict[str, Any]]:
    """Workers heard from in the last day: up when seen in the last minute, else stale."""
    rows = WorkerStatus.objects.filter(last_seen__gte=now - WORKER_LIST_SINCE).order_by(
        "-last_seen", "hostname"
    )[:50]
    out = []
    for w in rows:
        age = max(0.0, (now - w.last_seen).total_seconds())
        out.append(
            {
                "hostname": w.hostname,
                "pid": w.pid,
                "queues": w.queues.replace(",", ", "),
                "concurrency": w.concurrency,
                "device": w.device or "cpu",
                "gpu": w.device.startswith("cuda"),
                "models": w.loaded_models,
                "started_at": w.started_at,
                "last_seen": w.last_seen,
                "age": duration_text(age),
                "up": age <= WORKER_UP_SECONDS,
            }
        )
    return out


# --- the page -------------------------------------------------------------------------------------
def _series_of(per_hour: dict[int, int], buckets: Iterable[datetime]) -> list[int]:
    return [per_hour.get(_key(b), 0) for b in buckets]


def dashboard_context(*, hours: int = 24, now: datetime | None = None) -> dict[str, Any]:
    """Everything console/dashboard.html shows, for the last `hours` hours up to `now`."""
    now = now or timezone.now()
    hours = max(1, min(int(hours), MAX_HOURS))
    buckets = _buckets(now, hours)
    since, until = buckets[0], buckets[-1] + timedelta(hours=1)
    labels = [_label(b, hours) for b in buckets]

    received, sources, states = _received(since, until)
    events = _events(since, until)
    # Completed studies and messages per hour are the items the latency counts: done (written
    # back) or processed, by the hour that happened.
    latency = {
        "study": _latency(Study, "first_received_at", "state_changed_at", STUDY_DONE, buckets),
        "message": _latency(Message, "received_at", "processed_at", [MessageState.PROCESSED.value], buckets),
    }
    kinds = []
    totals = dict.fromkeys(MEASURES, 0)
    for kind, kind_label in KINDS.items():
        series = {"received": _series_of(received.get(kind, {}), buckets)}
        for measure in ("acked", "completed", "failed"):
            series[measure] = _series_of(events.get(kind, {}).get(measure, {}), buckets)
        if kind in latency:
            series["completed"] = [n for _, _, n in latency[kind]["hourly"]]
        kind_totals = {m: sum(series[m]) for m in MEASURES}
        for m in MEASURES:
            totals[m] += kind_totals[m]
        chart: SafeString = bar_chart(
            f"{kind_label} per hour",
            labels,
            [Series(MEASURE_LABELS[m], series[m], MEASURE_COLOURS[m]) for m in MEASURES],
            unit="items",
            size=(1300, 220),  # a full-width panel
        )
        rows = [
            {"label": labels[i], **{m: series[m][i] for m in MEASURES}}
            for i in range(hours)
            if any(series[m][i] for m in MEASURES)
        ]
        kinds.append(
            {
                "kind": kind,
                "label": kind_label,
                "totals": kind_totals,
                "chart": chart,
                "rows": rows,
                "states": sorted(states.get(kind, {}).items()),
            }
        )

    latency_charts = {
        kind: line_chart(
            f"{KINDS[kind]}: end-to-end latency per hour",
            labels,
            [
                Series("p50", [p50 for p50, _, _ in latency[kind]["hourly"]], "#1f5fbf"),
                Series("p95", [p95 for _, p95, _ in latency[kind]["hourly"]], "#b3261e"),
            ],
            unit="seconds",
            size=(640, 220),  # half a grid2
        )
        for kind in latency
    }
    for row in sources:  # FHIR reports have no state: their outcome is their events'
        if row["kind"] == "report":
            report = next(k for k in kinds if k["kind"] == "report")["totals"]
            row["completed"], row["failed"] = report["completed"], report["failed"]
    workers = _workers(now)
    up = [w for w in workers if w["up"]]
    gpus = sorted({w["device"] for w in up if w["gpu"]})
    cards = [
        {"label": f"received, last {hours} h", "value": totals["received"], "css": ""},
        {"label": "acknowledged", "value": totals["acked"], "css": ""},
        {"label": "completed", "value": totals["completed"], "css": ""},
        {"label": "failed", "value": totals["failed"], "css": "state-failed" if totals["failed"] else ""},
        {
            "label": f"study latency p50 / p95 (n={latency['study']['n']})",
            "value": f"{latency['study']['p50_text']} / {latency['study']['p95_text']}",
            "css": "",
        },
        {
            "label": f"HL7 latency p50 / p95 (n={latency['message']['n']})",
            "value": f"{latency['message']['p50_text']} / {latency['message']['p95_text']}",
            "css": "",
        },
        {
            "label": "workers up" + (f" · GPU: {', '.join(gpus)}" if gpus else " · no GPU"),
            "value": f"{len(up)} / {len(workers)}",
            "css": "" if up and len(up) == len(workers) else "state-failed",
        },
    ]
    return {
        "window_hours": hours,
        "since": since,
        "generated_at": now,
        "cards": cards,
        "kinds": kinds,
        "sources": sources,
        "open_items": _open_items(),
        "latency": latency,
        "latency_charts": latency_charts,
        "queues": queue_status(),
        "workers": workers,
        "worker_up_seconds": WORKER_UP_SECONDS,
    }
