"""The search parameters fhirai supports, per resource type, and what each indexes: one table that
the store (what to index when a resource is written), the facade (how to read a query) and the
CapabilityStatement (what to declare) all read, so the three cannot disagree.

Kinds follow R4 (http://hl7.org/fhir/R4/search.html): token (system|code), reference (Type/id,
with :identifier for the referenced resource's identifier), date (prefixes eq ne gt lt ge le sa eb,
ranges by precision), string (case-insensitive starts-with), and the special _id / _lastUpdated."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # token | reference | date | string | special
    paths: tuple[str, ...] = ()  # elements of the resource it reads
    target: str = ""  # reference: the type a bare id means
    definition: str = ""  # canonical SearchParameter, when it is a standard one
    documentation: str = ""


def _std(rtype: str, name: str, kind: str, *paths: str, target: str = "", common: str = "") -> Param:
    definition = f"http://hl7.org/fhir/SearchParameter/{common or rtype}-{name}"
    return Param(name, kind, paths, target, definition)


def _common() -> list[Param]:
    return [
        Param("_id", "special", definition="http://hl7.org/fhir/SearchParameter/Resource-id"),
        Param(
            "_lastUpdated", "special", definition="http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"
        ),
    ]


def _clinical(rtype: str) -> list[Param]:
    """subject / patient / identifier, as the R4 clinical resources define them."""
    return [
        _std(rtype, "identifier", "token", "identifier", common="clinical"),
        _std(rtype, "patient", "reference", "subject", target="Patient", common="clinical"),
        _std(rtype, "subject", "reference", "subject", target="Patient"),
    ]


PARAMS: dict[str, list[Param]] = {
    "Patient": [
        *_common(),
        _std("Patient", "identifier", "token", "identifier"),
        _std("Patient", "birthdate", "date", "birthDate", common="individual"),
        _std("Patient", "gender", "token", "gender", common="individual"),
        _std("Patient", "family", "string", "name.family", common="individual"),
        _std("Patient", "given", "string", "name.given", common="individual"),
        _std("Patient", "name", "string", "name.family", "name.given", "name.text"),
        _std("Patient", "active", "token", "active"),
    ],
    "ServiceRequest": [
        *_common(),
        *_clinical("ServiceRequest"),
        _std("ServiceRequest", "status", "token", "status"),
        _std("ServiceRequest", "code", "token", "code", common="clinical"),
        _std("ServiceRequest", "authored", "date", "authoredOn"),
    ],
    "ImagingStudy": [
        *_common(),
        *_clinical("ImagingStudy"),
        _std("ImagingStudy", "status", "token", "status"),
        _std("ImagingStudy", "started", "date", "started"),
        _std("ImagingStudy", "basedon", "reference", "basedOn", target="ServiceRequest"),
    ],
    "DiagnosticReport": [
        *_common(),
        *_clinical("DiagnosticReport"),
        _std("DiagnosticReport", "status", "token", "status"),
        _std("DiagnosticReport", "code", "token", "code", common="clinical"),
        _std("DiagnosticReport", "category", "token", "category"),
        _std("DiagnosticReport", "date", "date", "effectiveDateTime", "effectivePeriod", common="clinical"),
        _std("DiagnosticReport", "issued", "date", "issued"),
        _std("DiagnosticReport", "based-on", "reference", "basedOn", target="ServiceRequest"),
        _std("DiagnosticReport", "result", "reference", "result", target="Observation"),
        Param(
            "study",
            "token",
            documentation="fhirai's own: the ImagingStudy read, by StudyInstanceUID, urn:oid:UID or ImagingStudy/id",
        ),
    ],
    # A patient's consent decisions; an active Consent whose provision denies is an opt-out of AI
    # processing (fhirai.context.consent).
    "Consent": [
        *_common(),
        _std("Consent", "identifier", "token", "identifier", common="clinical"),
        _std("Consent", "patient", "reference", "patient", target="Patient", common="clinical"),
        _std("Consent", "status", "token", "status"),
        _std("Consent", "date", "date", "dateTime", common="clinical"),
    ],
    "Observation": [
        *_common(),
        *_clinical("Observation"),
        _std("Observation", "status", "token", "status"),
        _std("Observation", "code", "token", "code", common="clinical"),
        _std("Observation", "category", "token", "category"),
        _std("Observation", "date", "date", "effectiveDateTime", "effectivePeriod", common="clinical"),
        _std("Observation", "based-on", "reference", "basedOn", target="ServiceRequest"),
        _std("Observation", "device", "reference", "device", target="Device"),
    ],
    "Device": [
        *_common(),
        _std("Device", "identifier", "token", "identifier"),
        _std("Device", "status", "token", "status"),
    ],
    "Provenance": [
        *_common(),
        _std("Provenance", "target", "reference", "target"),
        _std("Provenance", "recorded", "date", "recorded"),
        _std("Provenance", "agent", "reference", "agent.who", target="Device"),
    ],
    "Task": [
        *_common(),
        _std("Task", "identifier", "token", "identifier"),
        _std("Task", "status", "token", "status"),
        _std("Task", "code", "token", "code"),
        _std("Task", "patient", "reference", "for", target="Patient"),
        _std("Task", "subject", "reference", "for", target="Patient"),
        _std("Task", "focus", "reference", "focus", target="ImagingStudy"),
        _std("Task", "based-on", "reference", "basedOn", target="ServiceRequest"),
        _std("Task", "owner", "reference", "owner", target="Device"),
        _std("Task", "authored-on", "date", "authoredOn"),
        _std("Task", "modified", "date", "lastModified"),
        _std("Task", "period", "date", "executionPeriod"),
    ],
}
# AuditEvent is a read-only view of the audit trail (fhirai.audit), searched there.
AUDIT_PARAMS = [
    Param("_id", "special", definition="http://hl7.org/fhir/SearchParameter/Resource-id"),
    _std("AuditEvent", "date", "date", "recorded"),
    _std("AuditEvent", "subtype", "token", "subtype"),
    _std("AuditEvent", "outcome", "token", "outcome"),
]
BY_NAME: dict[str, dict[str, Param]] = {t: {p.name: p for p in ps} for t, ps in PARAMS.items()}
BY_NAME["AuditEvent"] = {p.name: p for p in AUDIT_PARAMS}


def _walk(node: Any, path: list[str]) -> Iterator[Any]:
    if not path:
        yield from node if isinstance(node, list) else [node]
        return
    for item in node if isinstance(node, list) else [node]:
        if isinstance(item, dict) and path[0] in item:
            yield from _walk(item[path[0]], path[1:])


def values(content: dict[str, Any], param: Param) -> Iterator[Any]:
    for path in param.paths:
        yield from _walk(content, path.split("."))


Token = tuple[str, str, str]


def index_tokens(content: dict[str, Any]) -> list[Token]:
    """The token/reference/string index rows of a resource, by its type's parameters."""
    out: list[Token] = []
    for param in PARAMS.get(content.get("resourceType", ""), []):
        for value in values(content, param):
            out.extend(_tokens(param, value))
    return out


def _tokens(param: Param, value: Any) -> list[Token]:
    name = param.name
    if param.kind == "token":
        if isinstance(value, bool):
            return [(name, "", "true" if value else "false")]
        if isinstance(value, str):
            return [(name, "", value)]
        if isinstance(value, dict) and "value" in value and isinstance(value["value"], str):  # Identifier
            return [(name, value.get("system", ""), value["value"])]
        if isinstance(value, dict):  # CodeableConcept / Coding
            codings = value.get("coding", [value] if "code" in value else [])
            return [(name, c.get("system", ""), c["code"]) for c in codings if c.get("code")]
        return []
    if param.kind == "reference" and isinstance(value, dict):
        rows: list[Token] = []
        if isinstance(value.get("reference"), str):
            rows.append((name, "", reference_normalize(value["reference"], param.target)))
        ident = value.get("identifier")
        if isinstance(ident, dict) and ident.get("value"):
            rows.append((f"{name}:identifier", ident.get("system", ""), ident["value"]))
        return rows
    if param.kind == "string" and isinstance(value, str):
        return [(name, "", value.casefold()[:255])]
    return []


def reference_normalize(reference: str, target: str = "") -> str:
    """`Type/id` for a reference given as an absolute URL on this server, Type/id, or a bare id."""
    base = f"{settings.FHIRAI_BASE_URL}/fhir/"
    if reference.startswith(base):
        reference = reference[len(base) :]
    reference = reference.split("/_history/", 1)[0]
    if "/" not in reference and target and not reference.startswith("urn:"):
        return f"{target}/{reference}"
    return reference


def index_dates(content: dict[str, Any]) -> list[tuple[str, datetime, datetime]]:
    """The date index rows: (parameter, low, high) with `high` exclusive."""
    out = []
    for param in PARAMS.get(content.get("resourceType", ""), []):
        if param.kind != "date":
            continue
        for value in values(content, param):
            span = period_range(value) if isinstance(value, dict) else date_range(value)
            if span:
                out.append((param.name, *span))
    return out


FAR_PAST = datetime(1, 1, 2, tzinfo=ZoneInfo("UTC"))
FAR_FUTURE = datetime(9999, 12, 30, tzinfo=ZoneInfo("UTC"))


def period_range(period: dict[str, Any]) -> tuple[datetime, datetime] | None:
    start = date_range(period.get("start")) if period.get("start") else None
    end = date_range(period.get("end")) if period.get("end") else None
    if not start and not end:
        return None
    return (start[0] if start else FAR_PAST, end[1] if end else FAR_FUTURE)


def date_range(value: Any) -> tuple[datetime, datetime] | None:
    """The instants a FHIR date, dateTime or instant covers, by its precision: 2024 is the whole
    year, 2024-03-05 the whole day (site time zone when no offset is given), a full time a second.
    None when it is not one, or when its range leaves years 1-9999 in UTC (what the database holds)."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        low, high = _span(value, ZoneInfo(settings.TIME_ZONE))
        low.astimezone(UTC), high.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return low, high


def _span(value: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    if len(value) == 4:
        low = datetime(int(value), 1, 1, tzinfo=zone)
        return low, low.replace(year=low.year + 1)
    if len(value) == 7:
        low = datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=zone)
        high = (
            low.replace(year=low.year + 1, month=1) if low.month == 12 else low.replace(month=low.month + 1)
        )
        return low, high
    if len(value) == 10:
        low = datetime.fromisoformat(value).replace(tzinfo=zone)
        return low, low + timedelta(days=1)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    if parsed.microsecond or "." in value:
        return parsed, parsed + timedelta(microseconds=1)
    return parsed, parsed + timedelta(seconds=1)
