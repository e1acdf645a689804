"""Patients and orders: upserts from the EHR's messages, merges, and the FHIR Patient and
ServiceRequest resources that reports point at."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fhirai.context.facts import OrderFacts, PatientFacts
from fhirai.context.models import Order, Patient
from fhirai.errors import NotFound
from fhirai.results.resources import stable_id, system, validated
from fhirai.results.store import resource_put, resource_read

GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ORDER_STATUS = {
    "CA": "revoked",
    "DC": "revoked",
    "CM": "completed",
    "HD": "on-hold",
    "SC": "active",
    "IP": "active",
    "NW": "active",
    "XO": "active",
}


def mrn_system(authority: str) -> str:
    """The identifier system of an MRN: per assigning authority (PID-3.4), else the site's default."""
    if authority in settings.FHIRAI_MRN_SYSTEMS:
        return settings.FHIRAI_MRN_SYSTEMS[authority]
    return (
        f"{settings.FHIRAI_IDENTIFIER_SYSTEM}:mrn:{authority}"
        if authority
        else settings.FHIRAI_PATIENT_ID_SYSTEM
    )


def patient_upsert(facts: PatientFacts, *, render: bool = True) -> Patient:
    """Create or update the patient named by MRN + authority (or the FHIR identifier system); its
    FHIR Patient is updated too, unless `render` is False because the source just stored it (FHIR).
    A FHIR source's id is adopted: a record first known under another id keeps that resource,
    marked inactive and replaced-by the source's."""
    sys = facts.mrn_system or mrn_system(facts.mrn_authority)
    with transaction.atomic():
        patient, _ = Patient.objects.select_for_update().get_or_create(
            mrn_system=sys,
            mrn=facts.mrn,
            defaults={
                "resource_id": facts.resource_id or stable_id("Patient", sys, facts.mrn),
                "updated_at": timezone.now(),
            },
        )
        for attr in ("family", "given", "birth_date", "sex"):
            value = getattr(facts, attr)
            if value:
                setattr(patient, attr, value)
        replaced = ""
        if facts.resource_id and facts.resource_id != patient.resource_id:
            replaced, patient.resource_id = patient.resource_id, facts.resource_id
        patient.updated_at = timezone.now()
        patient.save()
        if replaced:
            _replaced_by("Patient", replaced, patient.resource_id)
        if render:
            patient_resource_put(patient)
    return patient


def _replaced_by(rtype: str, old_id: str, new_id: str) -> None:
    """The resource a record had before it adopted the source's id: kept, pointing at the new one."""
    try:
        content = dict(resource_read(rtype, old_id).content)
    except NotFound:
        return
    if rtype == "Patient":
        content["active"] = False
        content["link"] = [{"other": {"reference": f"Patient/{new_id}"}, "type": "replaced-by"}]
    else:  # ServiceRequest: fhirai's own rendering of an order the source now holds
        content["status"] = "entered-in-error"
    resource_put(validated(content))


def patient_merge(survivor: PatientFacts, prior: PatientFacts) -> Patient:
    """ADT^A40: the prior record is merged into the survivor; later results go to the survivor."""
    with transaction.atomic():
        keep = patient_upsert(survivor)
        old = patient_upsert(prior)
        if old.pk != keep.pk:
            old.merged_into = keep
            old.save(update_fields=["merged_into"])
            Order.objects.filter(patient=old).update(patient=keep)
            patient_resource_put(old)
    return keep


def patient_find(mrn: str, authority_system: str = "") -> Patient | None:
    """The surviving patient with this MRN (in this system, or the only one with this MRN)."""
    qs = Patient.objects.filter(mrn=mrn)
    if authority_system:
        qs = qs.filter(mrn_system=authority_system)
    found = list(qs[:2])
    return found[0].surviving() if len(found) == 1 else None


def patient_reference(patient: Patient) -> dict[str, Any]:
    return {
        "reference": f"Patient/{patient.resource_id}",
        "type": "Patient",
        "identifier": {"system": patient.mrn_system, "value": patient.mrn},
    }


def _current(rtype: str, rid: str) -> dict[str, Any]:
    """The stored resource without its meta (what a source sent, or what fhirai rendered before)."""
    try:
        return {k: v for k, v in resource_read(rtype, rid).content.items() if k != "meta"}
    except NotFound:
        return {}


def _identifiers_merge(existing: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored identifiers, plus each of ours whose system|value is not among them yet."""
    seen = {(i.get("system", ""), i.get("value")) for i in existing}
    return existing + [i for i in ours if (i.get("system", ""), i["value"]) not in seen]


def patient_resource_put(patient: Patient) -> None:
    """Render the record onto its FHIR Patient: what the record knows (MRN, name, sex, birth date,
    merge links) replaces those elements; whatever else a FHIR source sent is kept."""
    content: dict[str, Any] = _current("Patient", patient.resource_id)
    content.update(resourceType="Patient", id=patient.resource_id)
    content["identifier"] = _identifiers_merge(
        content.get("identifier", []),
        [
            {
                "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                "system": patient.mrn_system,
                "value": patient.mrn,
            }
        ],
    )
    content["active"] = patient.merged_into_id is None
    if patient.family or patient.given:
        name: dict[str, Any] = {"use": "official"}
        if patient.family:
            name["family"] = patient.family
        if patient.given:
            name["given"] = patient.given.split()
        others = [
            n
            for n in content.get("name", [])
            if n.get("use") != "official"
            and (n.get("family"), n.get("given")) != (name.get("family"), name.get("given"))
        ]
        same = [
            n
            for n in content.get("name", [])
            if (n.get("family"), n.get("given")) == (name.get("family"), name.get("given"))
        ]
        content["name"] = same[:1] + others if same else [name, *others]
    if patient.sex in GENDER:
        content["gender"] = GENDER[patient.sex]
    if patient.birth_date:
        content["birthDate"] = patient.birth_date
    if patient.merged_into_id:
        survivor = patient.surviving()
        content["link"] = [{"other": {"reference": f"Patient/{survivor.resource_id}"}, "type": "replaced-by"}]
    resource_put(validated(content))


def order_upsert(facts: OrderFacts, patient: Patient | None, *, render: bool = True) -> Order:
    """Create or update the imaging order keyed by accession; its FHIR ServiceRequest is updated
    too unless `render` is False (the FHIR source just stored it; its id is adopted)."""
    with transaction.atomic():
        order, _ = Order.objects.select_for_update().get_or_create(
            accession=facts.accession,
            defaults={
                "resource_id": facts.resource_id or stable_id("ServiceRequest", facts.accession),
                "updated_at": timezone.now(),
            },
        )
        if facts.resource_id and facts.resource_id != order.resource_id:
            _replaced_by("ServiceRequest", order.resource_id, facts.resource_id)
            order.resource_id = facts.resource_id
        for attr in (
            "placer_number",
            "filler_number",
            "procedure_code",
            "procedure_system",
            "procedure_text",
        ):
            value = getattr(facts, attr)
            if value:
                setattr(order, attr, value[:199])
        order.status = facts.fhir_status or ORDER_STATUS.get(facts.status or facts.control, order.status)
        if patient is not None:
            order.patient = patient.surviving()
        order.updated_at = timezone.now()
        order.save()
        if render:
            order_resource_put(order)
    return order


def order_for_accession(accession: str) -> Order | None:
    return Order.objects.select_related("patient").filter(accession=accession).first() if accession else None


def order_identifiers(order: Order) -> list[dict[str, Any]]:
    ids = []
    for code, value in (
        ("PLAC", order.placer_number),
        ("FILL", order.filler_number),
        ("ACSN", order.accession),
    ):
        if value:
            ids.append(
                {
                    "type": {"coding": [{"system": V2_0203, "code": code}]},
                    "system": system(code.lower()),
                    "value": value,
                }
            )
    return ids


def order_reference(order: Order) -> dict[str, Any]:
    acsn = order_identifiers(order)[-1]
    return {"reference": f"ServiceRequest/{order.resource_id}", "type": "ServiceRequest", "identifier": acsn}


def order_resource_put(order: Order) -> None:
    code: dict[str, Any] = {"text": order.procedure_text or order.procedure_code or "Imaging procedure"}
    if order.procedure_code:
        code["coding"] = [
            {
                "code": order.procedure_code,
                **({"display": order.procedure_text} if order.procedure_text else {}),
            }
        ]
    content: dict[str, Any] = _current("ServiceRequest", order.resource_id)
    sourced = bool(content)  # a FHIR source's ServiceRequest: its code and category stay its own
    content.update(
        resourceType="ServiceRequest",
        id=order.resource_id,
        identifier=_identifiers_merge(content.get("identifier", []), order_identifiers(order)),
        status=order.status,
        intent=content.get("intent", "order"),
    )
    if not sourced or order.procedure_code:
        content["category"] = content.get("category") or [
            {"coding": [{"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}]}
        ]
        content["code"] = code
    if order.patient:
        content["subject"] = patient_reference(order.patient.surviving())
    content.setdefault("subject", {"display": "unknown"})
    resource_put(validated(content))


def fhir_subject_patient(content: dict[str, Any]) -> Patient | None:
    """The patient record a FHIR subject reference points at, by id or by identifier."""
    ref = content.get("subject") or {}
    target = ref.get("reference", "")
    if target.startswith("Patient/"):
        patient = Patient.objects.filter(resource_id=target.split("/", 1)[1]).first()
        if patient is not None:
            return patient.surviving()
    ident = ref.get("identifier") or {}
    if ident.get("value"):
        return patient_find(str(ident["value"]), str(ident.get("system", "")))
    return None
