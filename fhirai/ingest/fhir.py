"""FHIR R4 transaction and batch Bundles (R4 3.1.0.11): a transaction is all or nothing in one
database transaction, with urn:uuid fullUrls resolved to the ids the server assigns (conditional
creates resolved first, so references point at the existing resource); a batch processes each
entry on its own. Entries: POST (create, optional ifNoneExist), PUT (update / update-as-create),
GET (read).

`permits`, when given, says whether the caller may do an interaction (SMART's c r u of "cruds") on a
resource type: a transaction with an entry it may not do is refused whole (Forbidden, nothing
written); in a batch that entry alone answers 403."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.db import transaction

from fhirai.context.consent import consent_received
from fhirai.context.facts import OrderFacts, PatientFacts
from fhirai.context.received import order_received
from fhirai.context.records import fhir_subject_patient, patient_upsert
from fhirai.context.reports import fhir_report_received
from fhirai.errors import Forbidden, InvalidInput, NotFound
from fhirai.results.models import FhirResource
from fhirai.results.resources import references_rewrite, system
from fhirai.results.store import (
    TokenParam,
    resource_create,
    resource_read,
    resource_search,
    resource_update,
)


class EntryError(InvalidInput):
    """An entry of a transaction failed: the whole transaction is refused (with the entry's index)."""

    def __init__(self, index: int, cause: InvalidInput | NotFound) -> None:
        super().__init__(getattr(cause, "code", "not-found"), f"Bundle.entry[{index}]: {cause}")
        self.index, self.cause = index, cause


def conditions(query: str) -> list[list[TokenParam]]:
    """`identifier=sys|value&...` (ifNoneExist / If-None-Exist) as search criteria."""
    out = []
    for part in filter(None, query.lstrip("?").split("&")):
        name, _, value = part.partition("=")
        if name not in ("identifier", "_id"):
            raise InvalidInput(
                "not-supported", f"conditional criteria on {name} are not supported (identifier only)"
            )
        out.append([TokenParam.parse(name, v) for v in value.split(",")])
    return out


Permits = Callable[[str, str], bool]  # (resource type, interaction "c"/"r"/"u") -> allowed
INTERACTIONS = {"POST": "c", "GET": "r", "PUT": "u"}


def bundle_process(bundle: Any, *, permits: Permits | None = None) -> dict[str, Any]:
    """Process a transaction or batch Bundle and return the transaction-response / batch-response."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidInput("invalid", "POST to the base must carry a Bundle")
    kind = bundle.get("type")
    entries = bundle.get("entry") or []
    if kind == "transaction":
        if permits is not None:
            for index, entry in enumerate(entries):
                refused = _entry_refused(entry, permits)
                if refused:
                    raise Forbidden(f"Bundle.entry[{index}]: {refused}")
        with transaction.atomic():
            responses = _transaction(entries)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}
    if kind == "batch":
        return {
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [
                _batch_forbidden(r) if (r := _entry_refused(e, permits)) else _batch_entry(e) for e in entries
            ],
        }
    raise InvalidInput("invalid", "Bundle.type must be transaction or batch")


def _entry_refused(entry: Any, permits: Permits | None) -> str:
    """Why the caller may not do this entry ('' when it may, or when the entry is malformed: that
    is refused as such later). Both the URL's type and the resource's own are checked: a create
    stores the resource under its resourceType whatever the URL says."""
    if permits is None:
        return ""
    try:
        method, url, resource = _request(entry)
    except InvalidInput:
        return ""
    interaction = INTERACTIONS[method]
    types = {url.split("/", 1)[0]}
    if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
        types.add(resource["resourceType"])
    denied = sorted(t for t in types if not permits(t, interaction))
    if denied:
        return f"{method} {url}: insufficient_scope for {interaction} on {', '.join(denied)}"
    return ""


def _batch_forbidden(reason: str) -> dict[str, Any]:
    issue = {"severity": "error", "code": "forbidden", "diagnostics": reason}
    return {
        "response": {
            "status": "403 Forbidden",
            "outcome": {"resourceType": "OperationOutcome", "issue": [issue]},
        }
    }


def _transaction(entries: list[Any]) -> list[dict[str, Any]]:
    ids: dict[str, str] = {}
    plans = []
    for index, entry in enumerate(entries):  # pass 1: every fullUrl gets its target id
        try:
            method, url, resource = _request(entry)
            rtype = url.split("/", 1)[0]
            existing = None
            if method == "POST":
                criteria = conditions(entry["request"].get("ifNoneExist", ""))
                if criteria:
                    found = list(resource_search(rtype, criteria)[:2])
                    existing = found[0] if len(found) == 1 else None
                rid = existing.rid if existing else uuid.uuid4().hex
            else:
                rid = url.split("/", 1)[1] if "/" in url else ""
            if entry.get("fullUrl"):
                ids[entry["fullUrl"]] = f"{rtype}/{rid}"
            plans.append((index, method, rtype, rid, resource, existing))
        except (InvalidInput, KeyError) as exc:
            raise EntryError(
                index, exc if isinstance(exc, InvalidInput) else InvalidInput("invalid", str(exc))
            ) from None
    out = []
    for index, method, rtype, rid, resource, existing in plans:  # pass 2: write, references resolved
        try:
            out.append(_apply(method, rtype, rid, _resolve(resource, ids), existing))
        except (InvalidInput, NotFound) as exc:
            raise EntryError(index, exc) from None
    return out


def _batch_entry(entry: Any) -> dict[str, Any]:
    try:
        method, url, resource = _request(entry)
        rtype = url.split("/", 1)[0]
        with transaction.atomic():
            if method == "POST":
                row, created = fhir_create(
                    resource, if_none_exist=conditions(entry["request"].get("ifNoneExist", ""))
                )
                return _response(row, created)
            rid = url.split("/", 1)[1] if "/" in url else ""
            return _apply(method, rtype, rid, resource, None)
    except (InvalidInput, NotFound, KeyError) as exc:
        status = "404 Not Found" if isinstance(exc, NotFound) else "400 Bad Request"
        return {
            "response": {
                "status": status,
                "outcome": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "error",
                            "code": "not-found" if isinstance(exc, NotFound) else "invalid",
                            "diagnostics": str(exc),
                        }
                    ],
                },
            }
        }


def _request(entry: Any) -> tuple[str, str, dict[str, Any] | None]:
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise InvalidInput("invalid", "every entry needs a request")
    method = str(entry["request"].get("method", "")).upper()
    url = str(entry["request"].get("url", "")).split("?", 1)[0].strip("/")
    if method not in ("POST", "PUT", "GET") or not url:
        raise InvalidInput(
            "not-supported", f"request {method or '(none)'} {url or '(no url)'} is not supported"
        )
    resource = entry.get("resource")
    if method in ("POST", "PUT") and not isinstance(resource, dict):
        raise InvalidInput("invalid", f"a {method} entry needs a resource")
    if method == "PUT" and url.count("/") != 1:
        raise InvalidInput("invalid", "PUT needs Type/id")
    return method, url, resource


def _apply(
    method: str, rtype: str, rid: str, resource: dict[str, Any] | None, existing: FhirResource | None
) -> dict[str, Any]:
    if method == "GET":
        row = resource_read(rtype, rid)
        return {"resource": row.content, "response": {"status": "200 OK", "etag": f'W/"{row.version_id}"'}}
    if method == "POST":
        if existing is not None:
            return _response(existing, False)
        row, created = fhir_create(resource or {}, rid=rid, fresh=True)
        return _response(row, created)
    row, created = fhir_update(rtype, rid, {**(resource or {}), "id": rid})
    return _response(row, created)


def _response(row: FhirResource, created: bool) -> dict[str, Any]:
    return {
        "response": {
            "status": "201 Created" if created else "200 OK",
            "location": f"{row.resource_type}/{row.rid}/_history/{row.version_id}",
            "etag": f'W/"{row.version_id}"',
            "lastModified": row.last_updated.isoformat(),
        }
    }


def _resolve(node: Any, ids: dict[str, str]) -> Any:
    """urn:uuid fullUrls of this Bundle -> the Type/id they were given."""
    return references_rewrite(
        node, lambda ref: {**ref, "reference": ids.get(ref["reference"], ref["reference"])}
    )


def resource_receive(content: Any, *, source: str = "") -> FhirResource:
    """A resource an EHR pushed or notified (Subscriptions): validated and stored under its own id
    (update-as-create), its patient/order context applied. Raises ResourceInvalid
    (fhirai.results.store) when it does not conform. `source` names where it came from."""
    if not isinstance(content, dict) or not content.get("id"):
        raise InvalidInput("invalid", "a received resource needs resourceType and id")
    row, _ = fhir_update(content.get("resourceType", ""), content["id"], content)
    return row


def fhir_create(
    content: dict[str, Any],
    *,
    if_none_exist: list[list[Any]] | None = None,
    rid: str | None = None,
    fresh: bool = False,
) -> tuple[FhirResource, bool]:
    """Create (R4 create / conditional create) and apply the resource's context. The one savepoint
    of the write (the store below adds none): a refusal inside leaves an outer transaction usable."""
    with transaction.atomic():
        row, created = resource_create(content, if_none_exist=if_none_exist, rid=rid, fresh=fresh)
        if created:
            context_apply(row)
    return row, created


def fhir_update(
    rtype: str, rid: str, content: dict[str, Any], *, if_match: int | None = None
) -> tuple[FhirResource, bool]:
    """Update or create with this id (R4 update) and apply the resource's context."""
    with transaction.atomic():
        row, created = resource_update(rtype, rid, content, if_match=if_match)
        context_apply(row)
    return row, created


V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}


def context_apply(row: FhirResource) -> None:
    """Patient, ServiceRequest, ImagingStudy and DiagnosticReport from a FHIR source feed the same
    domain calls as HL7 v2 ADT, ORM and ORU: the patient record, the order keyed by accession, the
    study link, the report text for the NLP stage."""
    content = row.content
    if row.resource_type == "Patient":
        facts = patient_facts(content)
        if facts is not None:
            patient_upsert(facts, render=False)
    elif row.resource_type == "ServiceRequest":
        order = order_facts(content)
        if order is not None:
            order_received(order, fhir_subject_patient(content), render=False, via="ServiceRequest")
    elif row.resource_type == "DiagnosticReport":
        fhir_report_received(row)  # an EHR's report: its text to the NLP stage
    elif row.resource_type == "Consent":
        consent_received(row.rid, content)
    elif row.resource_type == "ImagingStudy":
        accession = _typed_identifier(content, "ACSN", system("acsn"))
        if accession:
            order_received(OrderFacts(accession=accession), fhir_subject_patient(content), via="ImagingStudy")


def _typed_identifier(content: dict[str, Any], code: str, fhirai_system: str) -> str:
    for ident in content.get("identifier", []):
        codes = {c.get("code") for c in ident.get("type", {}).get("coding", [])}
        if ident.get("value") and (code in codes or ident.get("system") == fhirai_system):
            return str(ident["value"])
    return ""


def patient_facts(content: dict[str, Any]) -> PatientFacts | None:
    """The patient a FHIR Patient names: its MR identifier (else its first), name, sex, birth date."""
    idents = [i for i in content.get("identifier", []) if i.get("value")]
    if not idents:
        return None
    mr = [i for i in idents if "MR" in {c.get("code") for c in i.get("type", {}).get("coding", [])}]
    ident = (mr or idents)[0]
    names = content.get("name", [])
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    return PatientFacts(
        mrn=str(ident["value"])[:64],
        mrn_authority=str(ident.get("assigner", {}).get("display", ""))[:64],
        mrn_system=str(ident.get("system", "")),
        family=str(name.get("family", ""))[:194],
        given=" ".join(name.get("given", []))[:194],
        birth_date=str(content.get("birthDate", "")),
        sex=SEX.get(content.get("gender", ""), ""),
        resource_id=content["id"],
    )


def order_facts(content: dict[str, Any]) -> OrderFacts | None:
    """The imaging order a FHIR ServiceRequest is: keyed by its accession (identifier type ACSN)."""
    accession = _typed_identifier(content, "ACSN", system("acsn"))
    if not accession:
        return None
    coding = (content.get("code", {}).get("coding") or [{}])[0]
    return OrderFacts(
        accession=accession[:64],
        placer_number=_typed_identifier(content, "PLAC", system("plac"))[:64],
        filler_number=_typed_identifier(content, "FILL", system("fill"))[:64],
        procedure_code=str(coding.get("code", ""))[:64],
        procedure_system=str(coding.get("system", ""))[:64],
        procedure_text=str(content.get("code", {}).get("text") or coding.get("display", ""))[:199],
        fhir_status=str(content.get("status", "")),
        resource_id=content["id"],
    )
