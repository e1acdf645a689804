"""The audit trail as FHIR R4 AuditEvents: each timeline event, rendered on read (the trail itself
stays one append-only table). Details carry ids and pseudonyms only, so the resources do too."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet

from fhirai.audit.models import TimelineEvent

DCM = "http://dicom.nema.org/resources/ontology/DCM"
# event -> (DCM audit event type, display, FHIR AuditEvent.action)
TYPES = {
    "received": ("110107", "Import", "C"),
    "written_back": ("110106", "Export", "R"),
}
DEFAULT_TYPE = ("110100", "Application Activity", "E")


def _source() -> dict[str, Any]:
    """AuditEvent.source: fhirai at this site, an application server, observed every event."""
    return {
        "site": settings.FHIRAI_BASE_URL,
        "observer": {"display": "fhirai"},
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server",
            }
        ],
    }


def audit_event(event: TimelineEvent) -> dict[str, Any]:
    """One timeline event as an R4 AuditEvent."""
    code, display, action = TYPES.get(event.event, DEFAULT_TYPE)
    failed = event.event == "failed"
    content: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event.pk),
        "meta": {"versionId": "1", "lastUpdated": event.at.isoformat()},
        "type": {"system": DCM, "code": code, "display": display},
        "subtype": [
            {
                "system": f"{settings.FHIRAI_IDENTIFIER_SYSTEM}:event",
                "code": event.event,
                "display": event.event.replace("_", " "),
            }
        ],
        "action": action,
        "recorded": event.at.isoformat(),
        "outcome": "8" if failed else ("4" if event.error else "0"),
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "AUT",
                            "display": "author (originator)",
                        }
                    ]
                },
                "who": {"display": "fhirai"},
                "requestor": False,
            }
        ],
        "source": _source(),
        "entity": [
            {
                "what": {
                    "identifier": {
                        "system": f"{settings.FHIRAI_IDENTIFIER_SYSTEM}:{event.item_kind}",
                        "value": str(event.item_id),
                    },
                    "display": f"{event.item_kind} {event.item_id}",
                },
                **({"description": event.detail[:1000]} if event.detail else {}),
            }
        ],
    }
    if event.error:
        content["outcomeDesc"] = event.error[:1000]
    return content


def audit_search(
    *,
    ids: list[str] | None = None,
    subtypes: list[str] | None = None,
    outcomes: list[str] | None = None,
    recorded: Q | None = None,
) -> QuerySet[TimelineEvent]:
    """Timeline events by id, subtype (the event name), outcome code and a filter on `at`, newest first."""
    qs = TimelineEvent.objects.all()
    if ids is not None:
        qs = qs.filter(pk__in=[int(i) for i in ids if i.isdigit()])
    if subtypes is not None:
        qs = qs.filter(event__in=subtypes)
    if outcomes is not None:
        wanted = Q(pk__in=[])
        if "0" in outcomes:
            wanted |= Q(error="") & ~Q(event="failed")
        if "4" in outcomes:
            wanted |= ~Q(error="") & ~Q(event="failed")
        if "8" in outcomes:
            wanted |= Q(event="failed")
        qs = qs.filter(wanted)
    if recorded is not None:
        qs = qs.filter(recorded)
    return qs.order_by("-at", "-id")


# --- the access audit (who looked at or changed what) as BALP-shaped AuditEvents -----------------

ACCESS_PREFIX = "access-"
REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
LOGIN_FAILURES = ("login.failed", "login.locked", "login.refused", "oauth.refused")


READS = ("view", "read", "rendered", "metadata", "retrieve", "frames", "instances", "series", "studies")
QUERIES = ("search", "list", "history")
# BALP subtype codes a search may ask for -> the access actions they cover.
SUBTYPE_ACTIONS = {
    "read": rf"\.({'|'.join(READS)})$",
    "search-type": rf"\.({'|'.join(QUERIES)})$",
    "110122": r"^(login|oauth)\.",
}


def _access_shape(action: str) -> tuple[dict[str, str], dict[str, str], str]:
    """(type, subtype, action code) after IHE BALP: Query for searches and lists, Read for views,
    Update for changes; a console login and an OAuth token request as DICOM User Authentication."""
    verb = action.rsplit(".", 1)[-1]
    if action.startswith(("login.", "oauth.")):
        return (
            {"system": DCM, "code": "110114", "display": "User Authentication"},
            {"system": DCM, "code": "110122", "display": "Login"},
            "E",
        )
    if verb == "purge":
        return {"system": REST, "code": "rest"}, {"system": INTERACTION, "code": "delete"}, "D"
    if verb in QUERIES:
        return {"system": REST, "code": "rest"}, {"system": INTERACTION, "code": "search-type"}, "E"
    if verb in (
        "view",
        "read",
        "rendered",
        "metadata",
        "retrieve",
        "frames",
        "instances",
        "series",
        "studies",
    ):
        return {"system": REST, "code": "rest"}, {"system": INTERACTION, "code": "read"}, "R"
    return {"system": REST, "code": "rest"}, {"system": INTERACTION, "code": "update"}, "U"


def access_audit_event(event: Any) -> dict[str, Any]:
    """One access record (fhirai.api.models.AccessEvent) as an R4 AuditEvent: the agent is the user
    or API client that asked (requestor), the entities are the items it saw or changed (ids only),
    and the record's hash-chain link travels in the first entity's details."""
    kind, interaction, action = _access_shape(event.action)
    failed = event.action in LOGIN_FAILURES
    entities: list[dict[str, Any]] = [
        {
            "what": {
                "identifier": {
                    "system": f"{settings.FHIRAI_IDENTIFIER_SYSTEM}:{event.item_kind or 'item'}",
                    "value": str(item_id),
                }
            },
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
        }
        for item_id in (event.item_ids or [])[:100]
    ] or [{"description": event.item_kind or "no item"}]
    entities[0]["detail"] = [
        {"type": "sha256", "valueString": event.hash or "(not sealed yet)"},
        {"type": "previous-sha256", "valueString": event.prev_hash or ""},
    ]
    if event.detail:
        entities[0]["description"] = event.detail[:1000]
    return {
        "resourceType": "AuditEvent",
        "id": f"{ACCESS_PREFIX}{event.pk}",
        "meta": {"versionId": "1", "lastUpdated": event.at.isoformat()},
        "type": kind,
        "subtype": [
            interaction,
            {"system": f"{settings.FHIRAI_IDENTIFIER_SYSTEM}:access", "code": event.action},
        ],
        "action": action,
        "recorded": event.at.isoformat(),
        "outcome": "4" if failed else "0",
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "who": {
                    "identifier": {
                        "system": f"{settings.FHIRAI_IDENTIFIER_SYSTEM}:actor",
                        "value": event.actor,
                    }
                },
                "role": [{"text": event.role or "unauthenticated"}],
                "requestor": True,
            },
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://dicom.nema.org/resources/ontology/DCM",
                            "code": "110153",
                            "display": "Source Role ID",
                        }
                    ]
                },
                "who": {"display": "fhirai"},
                "requestor": False,
            },
        ],
        "source": _source(),
        "entity": entities,
    }


def _access_search(
    *, ids: list[str] | None, subtypes: list[str] | None, outcomes: list[str] | None, recorded: Q | None
) -> QuerySet[Any]:
    from fhirai.api.models import AccessEvent

    qs = AccessEvent.objects.all()
    if ids is not None:
        qs = qs.filter(
            pk__in=[
                int(i[len(ACCESS_PREFIX) :])
                for i in ids
                if i.startswith(ACCESS_PREFIX) and i[len(ACCESS_PREFIX) :].isdigit()
            ]
        )
    if subtypes is not None:
        either = Q(action__in=subtypes)  # fhirai's own codes: the action names
        for code, pattern in SUBTYPE_ACTIONS.items():
            if code in subtypes:
                either |= Q(action__regex=pattern)
        qs = qs.filter(either)
    if outcomes is not None:
        wanted = Q(pk__in=[])
        if "0" in outcomes:
            wanted |= ~Q(action__in=LOGIN_FAILURES)
        if "4" in outcomes:
            wanted |= Q(action__in=LOGIN_FAILURES)
        qs = qs.filter(wanted)
    if recorded is not None:
        qs = qs.filter(recorded)
    return qs.order_by("-at", "-id")


def audit_page(
    *,
    ids: list[str] | None = None,
    subtypes: list[str] | None = None,
    outcomes: list[str] | None = None,
    recorded: Q | None = None,
    count: int,
    offset: int,
) -> tuple[int, list[dict[str, Any]]]:
    """One page of the whole trail, newest first: timeline events (what happened to items) and
    access records (who looked at or changed what), merged by time. Pending access records are
    sealed first, so each one shown carries its chain link."""
    from fhirai.api.access import audit_seal

    audit_seal()
    timeline = audit_search(ids=ids, subtypes=subtypes, outcomes=outcomes, recorded=recorded)
    access = _access_search(ids=ids, subtypes=subtypes, outcomes=outcomes, recorded=recorded)
    wanted = offset + count
    merged = sorted(
        [(e.at, 0, e.pk, e) for e in timeline[:wanted]] + [(e.at, 1, e.pk, e) for e in access[:wanted]],
        key=lambda row: (row[0], row[1], row[2]),
        reverse=True,
    )[offset:wanted]
    total = timeline.count() + access.count()
    return total, [audit_event(e) if kind == 0 else access_audit_event(e) for _, kind, _, e in merged]


def audit_lookup(rid: str) -> tuple[dict[str, Any], Any] | None:
    """AuditEvent/{rid}: a timeline event (a number) or an access record (access-N)."""
    from fhirai.api.access import audit_seal
    from fhirai.api.models import AccessEvent

    if rid.startswith(ACCESS_PREFIX) and rid[len(ACCESS_PREFIX) :].isdigit():
        audit_seal()
        access = AccessEvent.objects.filter(pk=int(rid[len(ACCESS_PREFIX) :])).first()
        return (access_audit_event(access), access.at) if access else None
    event = TimelineEvent.objects.filter(pk=int(rid) if rid.isdigit() else -1).first()
    return (audit_event(event), event.at) if event else None
