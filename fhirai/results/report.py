"""Results as FHIR R4: one DiagnosticReport per (study, model), its Observations (UCUM units), the
Device that is the model, a Provenance, and the ImagingStudy it read. Re-identified through the
vault (the model's output only ever names pseudonyms), validated with fhir.resources (R4B models:
R4 and R4B agree on every element used here), stored, and queued for write-back."""

from __future__ import annotations

import base64
import html
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fhirai.audit.timeline import Event, record
from fhirai.context.records import (
    order_for_accession,
    order_reference,
    patient_find,
    patient_reference,
)
from fhirai.deid.vault import vault_lookup
from fhirai.ingest.models import Study, StudyState
from fhirai.ingest.state import study_transition
from fhirai.results.models import FhirResource
from fhirai.results.resources import stable_id, system, validated
from fhirai.results.store import Token, resource_put
from fhirai.results.writeback import deliveries_create
from fhirai.routing.models import InferenceJob, JobState

UCUM = "http://unitsofmeasure.org"
DICOM_UID_SYSTEM = "urn:dicom:uid"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


def report_from_job(job: Any) -> FhirResource:
    """Build, store and queue the report for the study's finished jobs (call inside the transaction
    that recorded the last job's result)."""
    study: Study = job.study
    model = job.model
    study_uid, subject, order = study_context(study)
    now = timezone.now()
    effective = study_datetime(study.study_date, study.study_time) or now
    report_key = f"{study_uid}\x1f{model.name}\x1f{model.version}"
    report_value = stable_id("report", report_key)
    device = device_resource(model)
    imaging = imaging_study_resource(study, study_uid, subject)
    observations = [
        observation_resource(
            m,
            model=model,
            report_value=report_value,
            subject=subject,
            device_id=device["id"],
            effective=effective,
            issued=now,
        )
        for m in job.result.get("measurements", [])
    ]
    report = {
        "resourceType": "DiagnosticReport",
        "id": report_id(study_uid, model),
        "identifier": [{"system": system("report"), "value": report_value}],
        "status": "final" if study.revision == 1 else "amended",
        "category": [
            {
                "coding": [
                    {"system": "http://loinc.org", "code": "LP29684-5", "display": "Radiology"},
                    {"system": V2_0074, "code": "RAD", "display": "Radiology"},
                ]
            }
        ],
        "code": model.report_code or {"text": model.title},
        "subject": subject,
        "performer": [{"type": "Organization", "display": settings.FHIRAI_ORGANIZATION_NAME}],
        **({"basedOn": [order_reference(order)]} if order else {}),
        "effectiveDateTime": effective.isoformat(),
        "issued": now.isoformat(),
        "imagingStudy": [{"reference": f"ImagingStudy/{imaging['id']}", **_study_identifier(study_uid)}],
        "result": [
            {"reference": f"Observation/{o['id']}", "display": o["code"]["text"]} for o in observations
        ],
        "conclusion": str(job.result.get("conclusion", ""))[:4000] or f"{model.title}: see results.",
    }
    lines = [report["conclusion"], ""] + [
        f"{o['code']['text']}: {o['valueQuantity']['value']} {o['valueQuantity']['unit']}"
        for o in observations
    ]
    lines.append(f"\nProduced by {model.title} {model.version} (software, not a clinician).")
    report["text"] = {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">'
        + "".join(f"<p>{html.escape(line)}</p>" for line in lines if line.strip())
        + "</div>",
    }
    report["presentedForm"] = [
        {
            "contentType": "text/plain; charset=utf-8",
            "language": "en",
            "data": base64.b64encode("\n".join(lines).encode()).decode(),
            "title": f"{model.title} report",
            "creation": now.isoformat(),
        }
    ]
    provenance = {
        "resourceType": "Provenance",
        "id": stable_id("Provenance", report_key, str(study.revision)),
        "meta": {"tag": [{"system": system("report"), "code": f"{report_value}.{study.revision}"}]},
        "target": [{"reference": f"DiagnosticReport/{report['id']}"}]
        + [{"reference": f"Observation/{o['id']}"} for o in observations],
        "recorded": now.isoformat(),
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE",
                    "display": "create",
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "assembler",
                            "display": "Assembler",
                        }
                    ]
                },
                "who": {"reference": f"Device/{device['id']}", "display": f"{model.title} {model.version}"},
            }
        ],
        "entity": [
            {
                "role": "source",
                "what": {"reference": f"ImagingStudy/{imaging['id']}", **_study_identifier(study_uid)},
            }
        ],
    }
    study_tokens: list[Token] = [
        ("study", DICOM_UID_SYSTEM, f"urn:oid:{study_uid}"),
        ("study", "", study_uid),
        ("study", "", f"ImagingStudy/{imaging['id']}"),
    ]
    with transaction.atomic():
        # The type's search parameters are indexed by resource_put; these are fhirai's own.
        resource_put(validated(device))
        resource_put(validated(imaging), study_id=study.pk)
        for obs in observations:
            resource_put(validated(obs), study_id=study.pk)
        row = resource_put(validated(report), study_id=study.pk, tokens=study_tokens)
        resource_put(
            validated(provenance),
            study_id=study.pk,
            tokens=[("_tag", system("report"), provenance["meta"]["tag"][0]["code"])],
        )
        queued = deliveries_create(row, study)
        detail = f"DiagnosticReport/{row.rid} v{row.version_id}, {len(observations)} observations" + (
            f"; {queued} write-back(s) queued" if queued else ""
        )
        moved = study_transition(
            study.pk,
            from_states=[StudyState.QUEUED, StudyState.WRITTEN_BACK],
            to=StudyState.REPORTED,
            event=Event.REPORTED,
            detail=detail,
        )
        if not moved:
            record("study", study.pk, Event.REPORTED, detail=detail)
    return row


def report_id(study_uid: str, model: Any) -> str:
    """The id of the report one model writes on one study (every revision is a version of it)."""
    return stable_id("DiagnosticReport", f"{study_uid}\x1f{model.name}\x1f{model.version}")


def study_reidentify(study: Study, subject: dict[str, str]) -> None:
    """Map the pseudonyms a result names back through the vault (write-back is its only reader)
    and check they are this study's: a result about another study must never be written here."""
    study_uid = vault_lookup("study-uid", subject.get("study_uid", ""), purpose="write-back")
    _, _, patient_id = vault_lookup(
        "patient-id", subject.get("patient_id", ""), purpose="write-back"
    ).partition("\x1f")
    if study_uid != study.study_uid or patient_id != study.patient_id:
        raise ValueError(f"the result names another study or patient than study {study.pk}")


def study_context(study: Study) -> tuple[str, dict[str, Any], Any]:
    """The study's StudyInstanceUID, the reference to its patient (the EHR's record when one is
    known, else the DICOM PatientID) and its order: identified data, trusted side only."""
    order = order_for_accession(study.accession_number)
    patient = order.patient.surviving() if order and order.patient else patient_find(study.patient_id)
    subject = (
        patient_reference(patient)
        if patient
        else dicom_patient_reference(study.patient_id, study.issuer_of_patient_id)
    )
    return study.study_uid, subject, order


def study_reports_refresh(study_id: int) -> int:
    """Rebuild the study's reports from its finished jobs, e.g. when its order or patient arrives
    after the report was written (the new version carries basedOn/subject and is delivered again)."""
    study = Study.objects.get(pk=study_id)
    if study.state not in (StudyState.REPORTED, StudyState.WRITTEN_BACK):
        return 0
    jobs = InferenceJob.objects.filter(study=study, revision=study.revision, state=JobState.DONE)
    count = 0
    for job in jobs.select_related("study", "model"):
        report_from_job(job)
        count += 1
    return count


def dicom_patient_reference(patient_id: str, issuer: str = "") -> dict[str, Any]:
    """A logical reference by the DICOM PatientID, for a patient no EHR message has described."""
    sys = (
        f"urn:oid:{issuer}"
        if issuer and all(p.isdigit() for p in issuer.split("."))
        else settings.FHIRAI_PATIENT_ID_SYSTEM
    )
    ref: dict[str, Any] = {"type": "Patient", "identifier": {"system": sys, "value": patient_id}}
    if issuer and not sys.startswith("urn:oid:"):
        ref["identifier"]["assigner"] = {"display": issuer}
    return ref


def _study_identifier(study_uid: str) -> dict[str, Any]:
    return {"identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}}


def study_datetime(date: str, time: str) -> datetime | None:
    """DICOM StudyDate + StudyTime, read in the site time zone (they carry no offset)."""
    if len(date) != 8 or not date.isdigit():
        return None
    digits = "".join(ch for ch in time.split(".")[0] if ch.isdigit())[:6].ljust(6, "0")
    try:
        naive = datetime.strptime(date + digits, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return naive.replace(tzinfo=ZoneInfo(settings.TIME_ZONE))


def device_resource(model: Any) -> dict[str, Any]:
    """The model as a Device: name, version, what it is."""
    return {
        "resourceType": "Device",
        "id": stable_id("Device", model.name, model.version),
        "identifier": [{"system": system("device"), "value": f"{model.name}-{model.version}"}],
        "status": "active",
        "manufacturer": "fhirai",
        "deviceName": [{"name": model.title, "type": "model-name"}],
        "type": {"text": f"AI model ({model.task})"},
        "version": [{"value": model.version}],
    }


def imaging_study_resource(study: Study, study_uid: str, subject: dict[str, Any]) -> dict[str, Any]:
    """The study the model read, as an R4 ImagingStudy (series and instance counts)."""
    series: dict[str, dict[str, Any]] = {}
    for uid, modality in study.instances.values_list("series_uid", "modality"):
        entry = series.setdefault(
            uid,
            {
                "uid": uid,
                "numberOfInstances": 0,
                "modality": {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": modality or "OT",
                },
            },
        )
        entry["numberOfInstances"] += 1
    content: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": stable_id("ImagingStudy", study_uid),
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "subject": subject,
        "numberOfSeries": len(series),
        "numberOfInstances": sum(s["numberOfInstances"] for s in series.values()),
        "series": list(series.values()),
    }
    started = study_datetime(study.study_date, study.study_time)
    if started:
        content["started"] = started.isoformat()
    if study.accession_number:
        content["identifier"].append(
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
                },
                "value": study.accession_number,
            }
        )
    if study.study_description:
        content["description"] = study.study_description
    return content


def observation_resource(
    measurement: dict[str, Any],
    *,
    model: Any,
    report_value: str,
    subject: dict[str, Any],
    device_id: str,
    effective: datetime,
    issued: datetime,
) -> dict[str, Any]:
    """One measurement as an imaging Observation with a UCUM quantity, coded from the model's record."""
    name = measurement["name"]
    spec = (model.outputs or {}).get(name)
    if spec is None:
        raise ValueError(f"model {model} returned {name!r}, which its record does not declare")
    value = round(float(measurement["value"]), int(spec.get("decimals", 2)))
    return {
        "resourceType": "Observation",
        "id": stable_id("Observation", report_value, name),
        "identifier": [{"system": system("observation"), "value": f"{report_value}.{name}"}],
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [spec["coding"]], "text": spec["coding"].get("display", name)},
        "subject": subject,
        "effectiveDateTime": effective.isoformat(),
        "issued": issued.isoformat(),
        "valueQuantity": {"value": value, "unit": spec["unit"], "system": UCUM, "code": spec["unit"]},
        "device": {"reference": f"Device/{device_id}"},
    }
