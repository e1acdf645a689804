"""FHIR Subscription notifications, whatever carried them over the wire: the hospital's FHIR server
tells fhirai that a Patient, ServiceRequest or ImagingStudy was created or changed, and fhirai
receives it as if it had been pushed (fhirai.ingest.fhir.resource_receive).

Two forms are read:
- R4 classic rest-hook (R4 subscription.html): the body is the changed resource, or empty (a
  "ping": something matched the criteria; there is nothing to fetch, so it is only recorded).
- Topic-based notifications: the R4 Subscriptions Backport IG (a `history` Bundle whose first entry
  is a `Parameters` SubscriptionStatus) and R4B/R5 (a `SubscriptionStatus` resource first, Bundle
  type `history` or `subscription-notification`). Handshakes and heartbeats update what fhirai
  knows of the subscription; event notifications are applied in event-number order, each focus
  taken from the Bundle (full-resource) or fetched from the notifying server (id-only).

Each subscription's event counter makes replays harmless (an event applied once is skipped after)
and makes losses visible: numbers the server counted that never arrived are recorded as missed,
and still applied should a retry bring them later. Nothing here knows HTTP: the adapter hands over
the parsed body and a `fetch(reference)` for the notifying server."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from fhirai.errors import InvalidInput, Unavailable
from fhirai.ingest.fhir import resource_receive
from fhirai.results.store import ResourceInvalid
from fhirai.subscriptions.models import Kind, Notification, NotificationStatus, Subscription

log = logging.getLogger(__name__)

Fetch = Callable[[str], dict[str, Any] | None]
"""GET one resource from the notifying server by reference (relative Type/id or an absolute URL).
None when it is gone; Unavailable when the server cannot be reached; InvalidInput for a
reference it will not fetch (another server's)."""

SOURCE = "fhir-subscription"
RECEIVED_TYPES = frozenset({"Patient", "ServiceRequest", "ImagingStudy"})
NOTIFICATION_BUNDLES = ("history", "subscription-notification")
TOPIC_KINDS = frozenset({Kind.HANDSHAKE, Kind.HEARTBEAT, Kind.EVENT, Kind.QUERY_STATUS, Kind.QUERY_EVENT})
MAX_MISSED_RANGES = 200
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")
_HISTORY = re.compile(r"/_history/[^/]+/?$")


class NotificationInvalid(InvalidInput):
    """The notification cannot be applied as sent: one (location, message) per problem, the
    location a FHIRPath-like path into the body. Messages never carry the values."""

    def __init__(self, issues: list[tuple[str, str]]) -> None:
        super().__init__("invalid", "; ".join(f"{where}: {message}" for where, message in issues))
        self.issues = issues


def _invalid(where: str, message: str) -> NotificationInvalid:
    return NotificationInvalid([(where, message)])


# --- what a notification says ---------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One notification-event. `number` is None only when a Bundle lists resources without events."""

    number: int | None
    focus: str  # a reference as sent; "" for an empty payload
    context: tuple[str, ...] = ()
    where: str = ""  # the location of its focus, for errors


@dataclass(frozen=True)
class Status:
    """A SubscriptionStatus, from the Backport IG's Parameters or the R4B/R5 resource."""

    subscription: str
    topic: str
    status: str
    kind: str
    events_since: int | None
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Carried:
    """An entry after the status: the resource (full-resource) or only its address (id-only)."""

    index: int
    resource: dict[str, Any] | None
    method: str


def reference_key(reference: str) -> str | None:
    """`Type/id` of a relative or absolute reference (a version suffix dropped); None otherwise."""
    match = _REFERENCE.search(reference or "")
    return f"{match.group(1)}/{match.group(2)}" if match else None


def _value(param: dict[str, Any]) -> Any:
    """The value[x] of a Parameters parameter or part, a Reference given as its reference."""
    for name, value in param.items():
        if name.startswith("value"):
            return value.get("reference", "") if isinstance(value, dict) else value
    return None


def _number(value: Any, where: str) -> int:
    """A counter sent as integer64 (a JSON string in R4B/R5), string (the Backport IG on R4),
    unsignedInt or decimal."""
    if isinstance(value, bool) or value is None:
        raise _invalid(where, "must be a non-negative integer")
    try:
        number = Decimal(str(value).strip())
    except ArithmeticError:
        raise _invalid(where, "must be a non-negative integer") from None
    if not number.is_finite() or number != number.to_integral_value() or number < 0:
        raise _invalid(where, "must be a non-negative integer")
    return int(number)


def _reference(value: Any, where: str) -> str:
    if not isinstance(value, str) or reference_key(value) is None:
        raise _invalid(where, "must be a reference to Type/id")
    return value


def _event_from_parts(parts: Any, where: str) -> Event:
    if not isinstance(parts, list):
        raise _invalid(f"{where}.part", "notification-event needs its parts")
    number, focus, focus_at, context = None, "", where, []
    for i, part in enumerate(parts):
        at = f"{where}.part[{i}]"
        if not isinstance(part, dict):
            raise _invalid(at, "must be an object")
        name = part.get("name")
        if name == "event-number":
            number = _number(_value(part), at)
        elif name == "focus":
            focus, focus_at = _reference(_value(part), at), at
        elif name == "additional-context" and reference_key(str(_value(part) or "")):
            context.append(str(_value(part)))  # optional: one fhirai cannot read is left out
    if number is None:
        raise _invalid(where, "notification-event needs an event-number")
    return Event(number, focus, tuple(context), focus_at)


def _status_from_parameters(resource: dict[str, Any], at: str) -> Status:
    params = resource.get("parameter")
    if not isinstance(params, list):
        raise _invalid(f"{at}.parameter", "the SubscriptionStatus parameters are missing")
    found: dict[str, tuple[Any, str]] = {}
    events = []
    for i, param in enumerate(params):
        where = f"{at}.parameter[{i}]"
        if not isinstance(param, dict):
            raise _invalid(where, "must be an object")
        if param.get("name") == "notification-event":
            events.append(_event_from_parts(param.get("part"), where))
        elif isinstance(param.get("name"), str):
            found.setdefault(param["name"], (_value(param), where))
    subscription, sub_at = found.get("subscription", (None, f"{at}.parameter"))
    kind, kind_at = found.get("type", (None, f"{at}.parameter"))
    since, since_at = found.get("events-since-subscription-start", (None, ""))
    return Status(
        subscription=_subscription_reference(subscription, sub_at),
        topic=str(found.get("topic", ("", ""))[0] or ""),
        status=str(found.get("status", ("", ""))[0] or ""),
        kind=_kind(kind, kind_at),
        events_since=None if since is None else _number(since, since_at),
        events=tuple(events),
    )


def _event_from_element(item: Any, where: str) -> Event:
    """An R4B/R5 SubscriptionStatus.notificationEvent."""
    if not isinstance(item, dict):
        raise _invalid(where, "must be an object")
    if item.get("eventNumber") is None:
        raise _invalid(f"{where}.eventNumber", "is required")
    focus = item.get("focus") if isinstance(item.get("focus"), dict) else {}
    reference = focus.get("reference") or ""
    context = [
        ref["reference"]
        for ref in item.get("additionalContext") or []
        if isinstance(ref, dict) and reference_key(str(ref.get("reference") or ""))
    ]
    return Event(
        _number(item["eventNumber"], f"{where}.eventNumber"),
        _reference(reference, f"{where}.focus") if reference else "",
        tuple(context),
        f"{where}.focus",
    )


def _status_from_resource(resource: dict[str, Any], at: str) -> Status:
    """R4B/R5 SubscriptionStatus: the same fields as elements."""
    events = []
    raw_events = resource.get("notificationEvent") or []
    if not isinstance(raw_events, list):
        raise _invalid(f"{at}.notificationEvent", "must be a list")
    for i, item in enumerate(raw_events):
        events.append(_event_from_element(item, f"{at}.notificationEvent[{i}]"))
    subscription = resource.get("subscription")
    since = resource.get("eventsSinceSubscriptionStart")
    return Status(
        subscription=_subscription_reference(
            subscription.get("reference") if isinstance(subscription, dict) else None, f"{at}.subscription"
        ),
        topic=str(resource.get("topic") or ""),
        status=str(resource.get("status") or ""),
        kind=_kind(resource.get("type"), f"{at}.type"),
        events_since=None if since is None else _number(since, f"{at}.eventsSinceSubscriptionStart"),
        events=tuple(events),
    )


def _subscription_reference(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid(where, "the subscription reference is required")
    if len(value) > 255:
        raise _invalid(where, "the subscription reference is longer than 255 characters")
    return value.strip()


def _kind(value: Any, where: str) -> str:
    if value not in TOPIC_KINDS:
        raise _invalid(
            where, "type must be handshake, heartbeat, event-notification, query-status or query-event"
        )
    return str(value)


def notification_read(bundle: dict[str, Any]) -> tuple[Status, dict[str, Carried]]:
    """The status of a topic-based notification Bundle and the entries after it, by Type/id."""
    if bundle.get("type") not in NOTIFICATION_BUNDLES:
        raise _invalid("Bundle.type", "a notification Bundle is of type history or subscription-notification")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise _invalid("Bundle.entry", "a notification Bundle starts with its SubscriptionStatus")
    first = entries[0].get("resource") if isinstance(entries[0], dict) else None
    at = "Bundle.entry[0].resource"
    if not isinstance(first, dict) or first.get("resourceType") not in ("Parameters", "SubscriptionStatus"):
        raise _invalid(at, "the first entry must be a SubscriptionStatus (Parameters on R4)")
    if first["resourceType"] == "Parameters":
        status = _status_from_parameters(first, at)
    else:
        status = _status_from_resource(first, at)
    return status, _carried(entries)


def _carried(entries: list[Any]) -> dict[str, Carried]:
    out: dict[str, Carried] = {}
    for index, entry in enumerate(entries[1:], start=1):
        if not isinstance(entry, dict):
            raise _invalid(f"Bundle.entry[{index}]", "must be an object")
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else None
        request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
        key = (
            reference_key(f"{resource.get('resourceType')}/{resource.get('id')}")
            if resource
            else reference_key(str(entry.get("fullUrl") or request.get("url") or ""))
        )
        if key:
            out[key] = Carried(index, resource, str(request.get("method", "")).upper())
    return out


def _events_of(status: Status, carried: dict[str, Carried]) -> tuple[Event, ...]:
    """The events in number order; a Bundle that lists resources but no events gets one per entry."""
    if status.events:
        return tuple(sorted(status.events, key=lambda e: e.number or 0))
    return tuple(Event(None, key, (), f"Bundle.entry[{c.index}]") for key, c in carried.items())


# --- what fhirai does with it ---------------------------------------------------------------------


@dataclass
class Result:
    """What became of one notification: for the record and the HTTP answer."""

    notification: int
    kind: str = Kind.UNREADABLE
    subscription: str = ""
    topic: str = ""
    events_since: int | None = None
    events: list[int] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    replayed: list[int] = field(default_factory=list)
    missed: list[tuple[int, int]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line without patient data: what was received, skipped, replayed, missed."""
        parts = [f"{len(self.received)} received"]
        if self.skipped:
            parts.append("skipped " + ", ".join(self.skipped))
        if self.replayed:
            parts.append(f"{len(self.replayed)} event(s) already applied")
        if self.missed:
            parts.append("missed events " + ", ".join(_span(a, b) for a, b in self.missed))
        return "; ".join(parts)


def notification_receive(body: Any, fetch: Fetch, *, target: str = "") -> Result:
    """Record and apply one notification (None for an empty body). `target` is the Type/id an R4
    classic rest-hook addressed (PUT [endpoint]/Type/id). Raises NotificationInvalid for a
    notification that cannot be read, Unavailable when a focus cannot be fetched now (the server
    should retry); either way the notification is recorded as failed. A focus that does not
    conform is recorded as a failure and the rest is applied: retrying would not change it."""
    row = Notification.objects.create(received_at=timezone.now())
    result = Result(notification=row.pk)
    try:
        _dispatch(body, fetch, target, result)
    except NotificationInvalid as exc:
        _finish(row, result, error=exc.detail)
        raise
    except Unavailable as exc:
        _finish(row, result, error=f"unavailable: {exc}")
        raise
    except Exception as exc:
        _finish(row, result, error=f"internal error: {type(exc).__name__}")
        raise
    _finish(row, result)
    return result


def notification_unreadable(issues: list[tuple[str, str]]) -> Notification:
    """Record a body the adapter could not even parse (not JSON, too large): kept for inspection."""
    now = timezone.now()
    error = "; ".join(f"{where}: {message}" for where, message in issues)[:4000]
    return Notification.objects.create(
        received_at=now, finished_at=now, status=NotificationStatus.FAILED, error=error
    )


def _finish(row: Notification, result: Result, *, error: str = "") -> None:
    failures = "; ".join(f"{where}: {message}" for where, message in result.failures)
    row.kind, row.subscription, row.topic = result.kind, result.subscription, result.topic[:255]
    row.events_since_start = result.events_since
    row.first_event = min(result.events) if result.events else None
    row.last_event = max(result.events) if result.events else None
    row.resources = result.received
    row.detail = result.summary()[:4000]
    row.error = "; ".join(filter(None, [error, failures]))[:4000]
    row.status = NotificationStatus.FAILED if row.error else NotificationStatus.PROCESSED
    row.finished_at = timezone.now()
    row.save()


def _dispatch(body: Any, fetch: Fetch, target: str, result: Result) -> None:
    if body is None or body == {}:
        result.kind = Kind.PING
        return
    if not isinstance(body, dict):
        raise _invalid("(body)", "a notification is a JSON object")
    rtype = body.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise _invalid("resourceType", "a notification is a FHIR resource")
    if rtype == "Bundle" and not target:
        _topic_based(body, fetch, result)
        return
    result.kind = Kind.REST_HOOK
    _classic(body, target, result)


def _classic(resource: dict[str, Any], target: str, result: Result) -> None:
    """R4 classic rest-hook with the resource as payload: a resource that does not conform makes
    the notification itself invalid (400 with the locations)."""
    rtype = resource["resourceType"]
    if not isinstance(resource.get("id"), str) or not resource["id"]:
        raise _invalid(f"{rtype}.id", "a notified resource needs its id")
    key = f"{rtype}/{resource['id']}"
    if target and key != target:
        raise _invalid(f"{rtype}.id", "must be the Type/id the URL names")
    if rtype not in RECEIVED_TYPES:
        result.skipped.append(f"{key} (not a type fhirai receives)")
        return
    try:
        resource_receive(resource, source=SOURCE)
    except ResourceInvalid as exc:
        raise NotificationInvalid(exc.issues) from None
    except InvalidInput as exc:
        raise _invalid(rtype, exc.detail) from None
    result.received.append(key)


def _topic_based(bundle: dict[str, Any], fetch: Fetch, result: Result) -> None:
    status, carried = notification_read(bundle)
    result.kind, result.subscription, result.topic = status.kind, status.subscription, status.topic
    result.events_since = status.events_since
    result.events = [e.number for e in status.events if e.number is not None]
    Subscription.objects.get_or_create(
        reference=status.subscription, defaults={"topic": status.topic[:255], "created_at": timezone.now()}
    )
    if status.kind in (Kind.EVENT, Kind.QUERY_EVENT):
        for event in _events_of(status, carried):
            _event_apply(status.subscription, event, carried, fetch, result)
    with transaction.atomic():
        sub = Subscription.objects.select_for_update().get(reference=status.subscription)
        _status_apply(sub, status, result)
        sub.save()


def _status_apply(sub: Subscription, status: Status, result: Result) -> None:
    """What every topic-based notification tells of its subscription; a handshake activates it."""
    now = timezone.now()
    if status.topic:
        sub.topic = status.topic[:255]
    if status.kind == Kind.HANDSHAKE:
        sub.status, sub.handshake_at = "active", now
    else:
        sub.status = status.status[:16] or sub.status
    if status.kind in (Kind.HEARTBEAT, Kind.QUERY_STATUS):
        sub.last_heartbeat_at = now
    if status.kind in (Kind.EVENT, Kind.QUERY_EVENT):
        sub.last_event_at = now
    if status.events_since is not None:
        sub.events_since_start = status.events_since
        if status.events_since > sub.highest_event:
            _missing(sub, sub.highest_event + 1, status.events_since, result)
            sub.highest_event = status.events_since


def _event_apply(
    subscription: str, event: Event, carried: dict[str, Carried], fetch: Fetch, result: Result
) -> None:
    """One event, exactly once: fetched outside any transaction, then applied and counted in one,
    under the subscription's row lock (so a concurrent retry of the same event waits, then skips)."""
    if event.number is not None:
        sub = Subscription.objects.get(reference=subscription)
        if not _open(sub, event.number):
            result.replayed.append(event.number)
            return
    resources = _gather(event, carried, fetch, result)
    with transaction.atomic():
        sub = Subscription.objects.select_for_update().get(reference=subscription)
        if event.number is not None and not _open(sub, event.number):
            result.replayed.append(event.number)
            return
        for where, content in resources:
            _ingest(where, content, result)
        if event.number is not None:
            _advance(sub, event.number, result)
        sub.save()


def _gather(
    event: Event, carried: dict[str, Carried], fetch: Fetch, result: Result
) -> list[tuple[str, dict[str, Any]]]:
    """The resources one event brings, context first (a ServiceRequest's Patient before it, so its
    subject resolves): context only when the Bundle carries it; the focus from the Bundle or
    fetched from the notifying server."""
    out = []
    for ref in event.context:
        entry = carried.get(reference_key(ref) or "")
        if entry and entry.resource is not None and entry.resource.get("resourceType") in RECEIVED_TYPES:
            out.append((f"Bundle.entry[{entry.index}].resource", entry.resource))
    if not event.focus:
        return out  # empty payload: the event is counted, there is nothing to receive
    key = reference_key(event.focus) or ""
    entry = carried.get(key)
    if key.split("/", 1)[0] not in RECEIVED_TYPES:
        result.skipped.append(f"{key} (not a type fhirai receives)")
    elif entry and entry.method == "DELETE":
        result.skipped.append(f"{key} (deleted at the source; not applied)")
    elif entry and entry.resource is not None:
        out.append((f"Bundle.entry[{entry.index}].resource", entry.resource))
    else:
        content = _fetch(fetch, event)
        if content is None:
            result.skipped.append(f"{key} (gone at the source)")
        elif f"{content.get('resourceType')}/{content.get('id')}" != key:
            result.failures.append((event.where, "the source answered with another resource than the focus"))
        else:
            out.append(("", content))
    return out


def _fetch(fetch: Fetch, event: Event) -> dict[str, Any] | None:
    """The focus's current version from the notifying server."""
    try:
        content = fetch(_HISTORY.sub("", event.focus))
    except InvalidInput as exc:
        raise _invalid(event.where, exc.detail) from None
    return content if isinstance(content, dict) else None


def _ingest(where: str, content: dict[str, Any], result: Result) -> None:
    """Receive one resource; a refusal is recorded with its locations (never its values)."""
    key = f"{content.get('resourceType')}/{content.get('id')}"
    prefix = f"{where}." if where else ""
    try:
        resource_receive(content, source=SOURCE)
    except ResourceInvalid as exc:
        origin = "" if where else f" ({key} as fetched)"
        result.failures.extend((f"{prefix}{expr}", f"{message}{origin}") for expr, message in exc.issues)
        return
    except InvalidInput as exc:
        result.failures.append((where or key, exc.detail))
        return
    result.received.append(key)


# --- the event counter ------------------------------------------------------------------------------


def _open(sub: Subscription, number: int) -> bool:
    """Whether this event number has yet to be applied: above the highest known, or missed."""
    return number > sub.highest_event or any(a <= number <= b for a, b in sub.missed)


def _advance(sub: Subscription, number: int, result: Result) -> None:
    if number > sub.highest_event:
        if number > sub.highest_event + 1:
            _missing(sub, sub.highest_event + 1, number - 1, result)
        sub.highest_event = number
    else:
        sub.missed = ranges_remove(sub.missed, number)
        sub.missed_count = ranges_count(sub.missed)


def _missing(sub: Subscription, first: int, last: int, result: Result) -> None:
    """Events the server counted that fhirai never received: visible on the subscription and the
    notification, logged (a subscription reference and numbers only)."""
    sub.missed = ranges_add(sub.missed, first, last)[-MAX_MISSED_RANGES:]
    sub.missed_count = ranges_count(sub.missed)
    result.missed.append((first, last))
    log.warning("subscription %s: events %s never received", sub.reference, _span(first, last))


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def ranges_add(ranges: list[list[int]], first: int, last: int) -> list[list[int]]:
    """Sorted, merged [first, last] ranges with this one added."""
    merged: list[list[int]] = []
    for a, b in sorted([*map(list, ranges), [first, last]]):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def ranges_remove(ranges: list[list[int]], number: int) -> list[list[int]]:
    """The ranges without this number (a range split around it)."""
    out: list[list[int]] = []
    for a, b in ranges:
        if a <= number <= b:
            out += [r for r in ([a, number - 1], [number + 1, b]) if r[0] <= r[1]]
        else:
            out.append([a, b])
    return out


def ranges_count(ranges: list[list[int]]) -> int:
    return sum(b - a + 1 for a, b in ranges)
