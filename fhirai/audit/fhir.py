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
        "source": {
            "site": settings.FHIRAI_BASE_URL,
            "observer": {"display": "fhirai"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
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
