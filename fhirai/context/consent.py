"""Patients' opt-outs of AI processing: set from the site's list, HL7 v2 (PD1-12 Protection
Indicator) or FHIR Consent; asked by routing before a study or report is given to any model."""

from __future__ import annotations

from django.db.models import Q
from django.utils import timezone

from fhirai.context.models import ClinicalReport, OptOut, Order
from fhirai.context.records import fhir_subject_patient, mrn_system

SOURCES = ("site", "hl7", "fhir")


def optout_set(
    mrn: str,
    *,
    source: str,
    active: bool,
    authority: str = "",
    system: str = "",
    reference: str = "",
    note: str = "",
) -> OptOut:
    """Record what one source says of a patient (MRN + assigning authority, or an identifier system)."""
    if source not in SOURCES:
        raise ValueError(f"unknown opt-out source {source!r}")
    row, _ = OptOut.objects.update_or_create(
        mrn_system=system or mrn_system(authority),
        mrn=mrn,
        source=source,
        defaults={
            "active": active,
            "reference": reference[:128],
            "note": note[:200],
            "updated_at": timezone.now(),
        },
    )
    return row


def optout_sources(mrn: str, authority: str = "", *, system: str = "") -> list[str]:
    """The sources under which this patient has opted out ([] when none). A study's issuer of
    patient ID selects the identifier system; without one, any system's row for the MRN counts
    (a patient is never processed against an objection for want of an issuer)."""
    if not mrn:
        return []
    rows = OptOut.objects.filter(mrn=mrn, active=True)
    if system or authority:
        rows = rows.filter(
            Q(mrn_system=system or mrn_system(authority)) | Q(source="site", mrn_system=mrn_system(""))
        )
    return sorted(set(rows.values_list("source", flat=True)))


def study_optout(study: object) -> list[str]:
    """The opt-out sources of a study's patient (from its header's patient ID and issuer)."""
    return optout_sources(study.patient_id, study.issuer_of_patient_id)  # type: ignore[attr-defined]


def clinical_report_optout(report: ClinicalReport) -> list[str]:
    """The opt-out sources of a clinical report's patient, found through its order's accession
    ([] when the report names no order known here: there is no patient to ask about)."""
    if not report.accession:
        return []
    order = Order.objects.filter(accession=report.accession).select_related("patient").first()
    patient = order.patient.surviving() if order is not None and order.patient is not None else None
    return optout_sources(patient.mrn, system=patient.mrn_system) if patient is not None else []


def optout_detail(sources: list[str]) -> str:
    names = {"site": "the site's list", "hl7": "HL7 PD1-12", "fhir": "FHIR Consent"}
    return "skipped: opt-out (" + ", ".join(names[s] for s in sources) + ")"


def consent_received(rid: str, content: dict) -> bool | None:
    """A FHIR Consent stored through the facade (or a transaction): an active Consent whose base
    provision denies is the patient's opt-out; any other status or provision (permit, inactive,
    entered-in-error, rejected) lifts what this Consent said. Returns the opt-out state it set, or
    None when its patient is not known here (nothing to apply it to)."""
    patient = fhir_subject_patient({"subject": content.get("patient") or {}})
    if patient is None:
        return None
    provision = content.get("provision") or {}
    denied = content.get("status") == "active" and provision.get("type") == "deny"
    optout_set(
        patient.mrn, system=patient.mrn_system, source="fhir", active=denied, reference=f"Consent/{rid}"
    )
    return denied
