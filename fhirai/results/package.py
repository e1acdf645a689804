"""A report and everything a non-FHIR destination needs to write it (HL7 ORU^R01, later DICOM
SR): the domain gathers it from the stored resources and the patient/order records; adapters
format it. Identified data: it never goes near the inference tier."""

from __future__ import annotations

from dataclasses import dataclass, field

from fhirai.context.models import Order, Patient
from fhirai.ingest.models import Study
from fhirai.results.models import FhirResource
from fhirai.results.store import resource_read


@dataclass
class PatientPart:
    mrn: str
    mrn_authority: str = ""
    family: str = ""
    given: str = ""
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # HL7 table 0001


@dataclass
class OrderPart:
    accession: str = ""
    placer_number: str = ""
    filler_number: str = ""
    procedure_code: str = ""
    procedure_text: str = ""
    procedure_system: str = ""


@dataclass
class ObservationPart:
    code: str
    display: str
    system: str
    value: float | str
    unit: str = ""
    status: str = "final"
    coded: dict[str, str] | None = None  # a coded value (finding present/absent): system, code, display
    probability: float | None = None


@dataclass
class ReportPackage:
    identifier: str
    status: str  # FHIR DiagnosticReport.status
    code: str
    code_display: str
    code_system: str
    effective: str  # ISO 8601
    issued: str
    conclusion: str
    patient: PatientPart
    order: OrderPart
    observations: list[ObservationPart] = field(default_factory=list)
    ai_generated: bool = False  # tagged AIAST: the destination is told it is not clinician-reviewed
    # The message ID a sender puts on the wire (HL7 MSH-10): one per delivery, the same on every
    # attempt, so a receiver that got an attempt whose answer was lost discards the resend.
    message_id: str = ""


def report_package(report: FhirResource) -> ReportPackage:
    """Gather one stored DiagnosticReport with its Observations, patient and order."""
    content = report.content
    study = Study.objects.filter(pk=report.study_id).first()
    coding = (content.get("code", {}).get("coding") or [{}])[0]
    observations = []
    for ref in content.get("result", []):
        obs = resource_read("Observation", ref["reference"].split("/", 1)[1]).content
        obs_coding = obs["code"]["coding"][0]
        quantity = obs.get("valueQuantity")
        concept = obs.get("valueCodeableConcept")
        coded = (concept.get("coding") or [None])[0] if concept else None
        probability = next(
            (
                c["valueQuantity"]["value"]
                for c in obs.get("component", [])
                if c.get("code", {}).get("text") == "probability" and "valueQuantity" in c
            ),
            None,
        )
        observations.append(
            ObservationPart(
                code=obs_coding["code"],
                display=obs_coding.get("display", obs["code"].get("text", "")),
                system=obs_coding.get("system", ""),
                value=quantity["value"]
                if quantity
                else (concept or {}).get("text", obs.get("valueString", "")),
                unit=quantity.get("code", "") if quantity else "",
                status=obs.get("status", "final"),
                coded=coded,
                probability=probability,
            )
        )
    return ReportPackage(
        identifier=content["identifier"][0]["value"],
        status=content["status"],
        code=coding.get("code", ""),
        code_display=coding.get("display", content.get("code", {}).get("text", "")),
        code_system=coding.get("system", ""),
        effective=content.get("effectiveDateTime", ""),
        issued=content.get("issued", ""),
        conclusion=content.get("conclusion", ""),
        patient=_patient(content, study),
        order=_order(content, study),
        observations=observations,
        ai_generated=any(t.get("code") == "AIAST" for t in content.get("meta", {}).get("tag", [])),
    )


def _patient(content: dict, study: Study | None) -> PatientPart:
    ref = content.get("subject", {}).get("reference", "")
    patient = (
        Patient.objects.filter(resource_id=ref.split("/", 1)[1]).first()
        if ref.startswith("Patient/")
        else None
    )
    if patient is not None:
        authority = patient.mrn_system.rsplit(":mrn:", 1)[1] if ":mrn:" in patient.mrn_system else ""
        return PatientPart(
            mrn=patient.mrn,
            mrn_authority=authority,
            family=patient.family,
            given=patient.given,
            birth_date=patient.birth_date.replace("-", ""),
            sex=patient.sex,
        )
    ident = content.get("subject", {}).get("identifier", {})
    part = PatientPart(mrn=ident.get("value", ""))
    if study is not None:
        family, _, given = study.patient_name.partition("^")
        part.family, part.given = family, given.replace("^", " ").strip()
        part.birth_date, part.sex = study.patient_birth_date, study.patient_sex[:1]
        part.mrn_authority = study.issuer_of_patient_id
    return part


def _order(content: dict, study: Study | None) -> OrderPart:
    refs = [r.get("reference", "") for r in content.get("basedOn", [])]
    order = next(
        (
            Order.objects.filter(resource_id=r.split("/", 1)[1]).first()
            for r in refs
            if r.startswith("ServiceRequest/")
        ),
        None,
    )
    if order is not None:
        return OrderPart(
            accession=order.accession,
            placer_number=order.placer_number,
            filler_number=order.filler_number,
            procedure_code=order.procedure_code,
            procedure_text=order.procedure_text,
            procedure_system=order.procedure_system,
        )
    return OrderPart(accession=study.accession_number if study else "")
