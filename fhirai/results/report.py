"""Results as FHIR R4: one DiagnosticReport per (study, model), its Observations (UCUM units), the
Device that is the model, a Provenance, and the ImagingStudy it read. Re-identified through the
vault (the model's output only ever names pseudonyms), validated with fhir.resources (R4B models:
R4 and R4B agree on every element used here), stored, and queued for write-back."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset

from fhirai import blobs
from fhirai.audit.timeline import Event, record
from fhirai.context.consent import clinical_report_optout, study_optout
from fhirai.context.records import (
    order_for_accession,
    order_reference,
    patient_find,
    patient_reference,
)
from fhirai.deid.vault import vault_lookup
from fhirai.ingest.models import Instance, Study, StudyState
from fhirai.ingest.state import study_transition
from fhirai.render import PreviewUnavailable, dataset_preview_png
from fhirai.results.destinations import pacs_peers
from fhirai.results.models import FhirResource
from fhirai.results.resources import stable_id, system, validated
from fhirai.results.store import Token, resource_put
from fhirai.results.writeback import deliveries_create
from fhirai.routing.models import InferenceJob, JobState
from fhirai.webhooks.events import report_created_emit

UCUM = "http://unitsofmeasure.org"
DICOM_UID_SYSTEM = "urn:dicom:uid"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


# IHE AI Results: every resource an AI model asserts is marked as such (HL7 v3 ObservationValue
# AIAST, "artificial intelligence asserted"), and the report waits for a clinician (preliminary)
# unless the site's policy says AI results stand as final (FHIRAI_AI_REPORT_STATUS).
AI_TAG = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
AI_NOTE = "AI-generated result, not yet reviewed by a clinician."
SNOMED = "http://snomed.info/sct"
# Finding values (SNOMED CT qualifier values): what the model or the report text says of a finding.
PRESENT = {"system": SNOMED, "code": "52101004", "display": "Present"}
ABSENT = {"system": SNOMED, "code": "2667000", "display": "Absent"}
INDETERMINATE = {"system": SNOMED, "code": "82334004", "display": "Indeterminate"}


@dataclass
class ResultContext:
    """What a report is about and where it goes: a study's images, or a clinical report's text."""

    key: str  # what identifies the report: the same key gives the same resource ids
    revision: int
    subject: dict[str, Any]
    order: Any
    effective: datetime
    study: Study | None = None
    imaging: dict[str, Any] | None = None
    source_text: str = ""  # for a report read from text: what it was read from
    tokens: list[Token] = field(default_factory=list)


def report_status(revision: int) -> str:
    if settings.FHIRAI_AI_REPORT_STATUS == "final":
        return "final" if revision == 1 else "amended"
    return "preliminary"


def report_from_job(job: Any) -> FhirResource:
    """Build, store and queue the report for the study's finished jobs (call inside the transaction
    that recorded the last job's result)."""
    study: Study = job.study
    study_uid, subject, order = study_context(study)
    ctx = ResultContext(
        key=f"{study_uid}\x1f{job.model.name}\x1f{job.model.version}",
        revision=study.revision,
        subject=subject,
        order=order,
        effective=study_datetime(study.study_date, study.study_time) or timezone.now(),
        study=study,
        imaging=imaging_study_resource(study, study_uid, subject),
        tokens=[
            ("study", DICOM_UID_SYSTEM, f"urn:oid:{study_uid}"),
            ("study", "", study_uid),
        ],
    )
    ctx.tokens.append(("study", "", f"ImagingStudy/{ctx.imaging['id']}"))
    row = result_report_put(job, ctx)
    if (settings.FHIRAI_DICOM_SR or pacs_peers()) and job.model.task in ("classification", "quantification"):
        job_sr_store(job, status=report_status(study.revision))
    return row


def job_sr_store(job: Any, *, status: str) -> str:
    """The job's result as a DICOM SR (TID 1500) built from the identified originals of the
    instances the model read, kept in the `out` blob area; returns its key. The SR's UIDs derive
    from the study, model and revision, so a rebuild replaces the same object."""
    from fhirai.results.sr import sr_build, sr_bytes  # highdicom loads only where SR is wanted

    instances = list(Instance.objects.filter(study=job.study, deid_blob_key__in=job.inputs).order_by("id"))
    if not instances:
        return ""
    originals = [dcmread(BytesIO(blobs.get(i.blob_key)), stop_before_pixels=True) for i in instances]
    # Findings name the de-identified SOP Instance UID they were seen on; map it to the original.
    deid_uids = [
        str(dcmread(BytesIO(blobs.get(i.deid_blob_key)), stop_before_pixels=True).SOPInstanceUID)
        for i in instances
    ]
    try:
        sr = sr_build(
            source=originals[0],
            result=job.result,
            model=job.model,
            instance_number=job.revision,
            status=status,
            instance_map=dict(zip(deid_uids, originals, strict=True)),
            evidence=originals[1:],
            created=job.finished_at,
            previous=_earlier_srs(job),
        )
    except ValueError as exc:  # a result SR cannot carry: the FHIR report stands alone, visibly
        record("study", job.study.pk, Event.SKIPPED, detail=f"no DICOM SR: {str(exc)[:300]}")
        return ""
    key = blobs.put(sr_bytes(sr), area="out")
    image_key = _key_image_store(job, instances, deid_uids, status)
    InferenceJob.objects.filter(pk=job.pk).update(sr_blob_key=key, key_image_blob_key=image_key)
    record(
        "study",
        job.study.pk,
        Event.REPORTED,
        detail=f"DICOM SR (TID 1500) {sr.SOPInstanceUID}"
        + (" and key image" if image_key else "")
        + " built",
    )
    return key


def _earlier_srs(job: Any) -> list[Dataset]:
    """The SR of the previous revision of this study and model, which a revised SR replaces."""
    earlier = (
        InferenceJob.objects.filter(study=job.study, model=job.model, revision__lt=job.revision)
        .exclude(sr_blob_key="")
        .order_by("-revision")
        .first()
    )
    if earlier is None:
        return []
    return [dcmread(BytesIO(blobs.get(earlier.sr_blob_key)), stop_before_pixels=True)]


def _key_image_store(job: Any, instances: list[Instance], deid_uids: list[str], status: str) -> str:
    """The key image (Secondary Capture, result drawn, NOT FOR DIAGNOSTIC USE burned in) from the
    image of the most likely present finding, else the middle image the model read."""
    from fhirai.results.keyimage import key_image_build, key_image_bytes

    by_deid = dict(zip(deid_uids, instances, strict=True))
    findings = sorted(
        (f for f in (job.result or {}).get("findings", []) if str(f.get("instance", "")) in by_deid),
        key=lambda f: (not f.get("present"), -float(f.get("probability", 0))),
    )
    chosen = by_deid[str(findings[0]["instance"])] if findings else instances[len(instances) // 2]
    original = dcmread(BytesIO(blobs.get(chosen.blob_key)))
    try:
        png = dataset_preview_png(original)
    except PreviewUnavailable as exc:
        record("study", job.study.pk, Event.SKIPPED, detail=f"no key image: {str(exc)[:300]}")
        return ""
    image = key_image_build(
        source=original,
        png=png,
        result=job.result or {},
        model=job.model,
        instance_number=job.revision,
        status=status,
    )
    return blobs.put(key_image_bytes(image), area="out")


def report_from_text_job(job: Any) -> FhirResource:
    """The report of an NLP model run on a clinical report's text (call inside the transaction that
    recorded the result): findings read from the EHR's or RIS's own report, as coded Observations
    with their evidence."""
    clinical = job.clinical_report
    patient = clinical.patient.surviving() if clinical.patient else None
    order = order_for_accession(clinical.accession) if clinical.accession else None
    if patient is None and order is not None and order.patient:
        patient = order.patient.surviving()
    ctx = ResultContext(
        key=f"{clinical.source_key()}\x1f{job.model.name}\x1f{job.model.version}",
        revision=1,
        subject=patient_reference(patient) if patient else {},
        order=order,
        effective=clinical.received_at,
        source_text=clinical.source_text(),
    )
    return result_report_put(job, ctx, clinical=clinical)


def result_report_put(job: Any, ctx: ResultContext, *, clinical: Any = None) -> FhirResource:
    model = job.model
    now = timezone.now()
    status = report_status(ctx.revision)
    report_value = stable_id("report", ctx.key)
    device = device_resource(model)
    common = {
        "model": model,
        "report_value": report_value,
        "subject": ctx.subject,
        "device_id": device["id"],
        "effective": ctx.effective,
        "issued": now,
        "status": status,
    }
    observations = [observation_resource(m, **common) for m in job.result.get("measurements", [])]
    observations += [
        finding_observation(f, **common)
        for f in job.result.get("findings", [])
        if f.get("status") != "not-mentioned"
    ]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": stable_id("DiagnosticReport", ctx.key),
        "meta": {"tag": [AI_TAG]},
        "identifier": [{"system": system("report"), "value": report_value}],
        "status": status,
        "category": [
            {
                "coding": [
                    {"system": "http://loinc.org", "code": "LP29684-5", "display": "Radiology"},
                    {"system": V2_0074, "code": "RAD", "display": "Radiology"},
                ]
            }
        ],
        "code": model.report_code or {"text": model.title},
        **({"subject": ctx.subject} if ctx.subject else {}),
        "performer": [{"type": "Organization", "display": settings.FHIRAI_ORGANIZATION_NAME}],
        **({"basedOn": [order_reference(ctx.order)]} if ctx.order else {}),
        "effectiveDateTime": ctx.effective.isoformat(),
        "issued": now.isoformat(),
        "result": [
            {"reference": f"Observation/{o['id']}", "display": o["code"]["text"]} for o in observations
        ],
        "conclusion": str(job.result.get("conclusion", ""))[:4000] or f"{model.title}: see results.",
    }
    if ctx.imaging is not None:
        report["imagingStudy"] = [
            {"reference": f"ImagingStudy/{ctx.imaging['id']}", **_study_identifier(ctx.study.study_uid)}
        ]
    lines = [report["conclusion"], ""] + [observation_line(o) for o in observations]
    if ctx.source_text:
        lines.append(f"Read from {ctx.source_text}.")
    lines.append(f"\nProduced by {model.title} {model.version} (software, not a clinician). {AI_NOTE}")
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
        "id": stable_id("Provenance", ctx.key, str(ctx.revision)),
        "meta": {"tag": [{"system": system("report"), "code": f"{report_value}.{ctx.revision}"}, AI_TAG]},
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
    }
    if ctx.imaging is not None:
        provenance["entity"] = [
            {
                "role": "source",
                "what": {
                    "reference": f"ImagingStudy/{ctx.imaging['id']}",
                    **_study_identifier(ctx.study.study_uid),
                },
            }
        ]
    elif ctx.source_text:
        provenance["entity"] = [{"role": "source", "what": {"display": ctx.source_text}}]
    study_id = ctx.study.pk if ctx.study is not None else None
    with transaction.atomic():
        # The type's search parameters are indexed by resource_put; these are fhirai's own.
        resource_put(validated(device))
        if ctx.imaging is not None:
            resource_put(validated(ctx.imaging), study_id=study_id)
        for obs in observations:
            resource_put(validated(obs), study_id=study_id)
        row = resource_put(validated(report), study_id=study_id, tokens=ctx.tokens)
        resource_put(
            validated(provenance),
            study_id=study_id,
            tokens=[("_tag", system("report"), provenance["meta"]["tag"][0]["code"])],
        )
        queued = deliveries_create(row, ctx.study, clinical_report=clinical)
        # Webhooks carry the report out too: none for a patient who opted out meanwhile (the
        # deliveries are withheld when their turn comes, and say so on the timeline).
        if not (study_optout(ctx.study) if ctx.study is not None else clinical_report_optout(clinical)):
            report_created_emit(row, job=job, study=ctx.study, clinical_report=clinical)
        detail = f"DiagnosticReport/{row.rid} v{row.version_id}, {len(observations)} observations" + (
            f"; {queued} write-back(s) queued" if queued else ""
        )
        if ctx.study is None:
            record(*clinical.timeline(), Event.REPORTED, detail=detail)
            return row
        moved = study_transition(
            ctx.study.pk,
            from_states=[StudyState.QUEUED, StudyState.WRITTEN_BACK],
            to=StudyState.REPORTED,
            event=Event.REPORTED,
            detail=detail,
        )
        if not moved:
            record("study", ctx.study.pk, Event.REPORTED, detail=detail)
    return row


def observation_line(obs: dict[str, Any]) -> str:
    """One line of the narrative for an Observation."""
    if "valueQuantity" in obs:
        return f"{obs['code']['text']}: {obs['valueQuantity']['value']} {obs['valueQuantity']['unit']}"
    value = obs["valueCodeableConcept"]["text"]
    extra = [
        f"probability {c['valueQuantity']['value']}" for c in obs.get("component", []) if "valueQuantity" in c
    ]
    return f"{obs['code']['text']}: {value}" + (f" ({', '.join(extra)})" if extra else "")


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
    status: str = "final",
) -> dict[str, Any]:
    """One measurement as an imaging Observation with a UCUM quantity, coded from the model's record."""
    name = measurement["name"]
    outputs = model.outputs or {}
    spec = outputs.get("measurements", outputs).get(name)
    if spec is None:
        raise ValueError(f"model {model} returned {name!r}, which its record does not declare")
    value = round(float(measurement["value"]), int(spec.get("decimals", 2)))
    obs = _observation(name, spec["coding"], report_value, subject, device_id, effective, issued, status)
    obs["valueQuantity"] = {"value": value, "unit": spec["unit"], "system": UCUM, "code": spec["unit"]}
    return obs


def _observation(
    name: str,
    coding: dict[str, Any],
    report_value: str,
    subject: dict[str, Any],
    device_id: str,
    effective: datetime,
    issued: datetime,
    status: str,
) -> dict[str, Any]:
    """What every AI Observation of a report says: its identity, the AI tag, code, subject, times
    and the model as device; the caller adds the value."""
    return {
        "resourceType": "Observation",
        "id": stable_id("Observation", report_value, name),
        "meta": {"tag": [AI_TAG]},
        "identifier": [{"system": system("observation"), "value": f"{report_value}.{name}"}],
        "status": status,
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [coding], "text": coding.get("display", name)},
        **({"subject": subject} if subject else {}),
        "effectiveDateTime": effective.isoformat(),
        "issued": issued.isoformat(),
        "device": {"reference": f"Device/{device_id}"},
    }


def finding_observation(
    finding: dict[str, Any],
    *,
    model: Any,
    report_value: str,
    subject: dict[str, Any],
    device_id: str,
    effective: datetime,
    issued: datetime,
    status: str = "final",
) -> dict[str, Any]:
    """One coded finding (IHE AI Results: one Observation per finding): the finding's code, whether
    it is present, absent or indeterminate, and how the model knows: a classifier's probability and
    threshold as components, or the sentences of the report text it was read from as notes."""
    name = str(finding["name"])
    coding = dict(finding["coding"])
    if "probability" in finding:
        value = PRESENT if finding.get("present") else ABSENT
    else:
        value = {"affirmed": PRESENT, "negated": ABSENT}.get(finding.get("status", ""), INDETERMINATE)
    obs = _observation(name, coding, report_value, subject, device_id, effective, issued, status)
    obs["valueCodeableConcept"] = {"coding": [value], "text": value["display"]}
    obs["note"] = [{"text": AI_NOTE}]
    if "probability" in finding:
        obs["method"] = {"text": f"{model.title} {model.version}: image classifier"}
        obs["component"] = [
            {
                "code": {"text": "probability"},
                "valueQuantity": {
                    "value": round(float(finding["probability"]), 4),
                    "unit": "1",
                    "system": UCUM,
                    "code": "1",
                },
            },
            {
                "code": {"text": "decision threshold"},
                "valueQuantity": {
                    "value": round(float(finding.get("threshold", 0.5)), 4),
                    "unit": "1",
                    "system": UCUM,
                    "code": "1",
                },
            },
        ]
    else:
        obs["method"] = {"text": f"{model.title} {model.version}: clinical NLP (target rules with ConText)"}
        for mention in finding.get("mentions", [])[:5]:
            flags = [
                k for k in ("negated", "uncertain", "historical", "hypothetical", "family") if mention.get(k)
            ]
            obs["note"].append(
                {
                    "text": f'Evidence: "{str(mention.get("sentence") or mention.get("text", ""))[:300]}"'
                    + f" (characters {mention.get('start')}-{mention.get('end')} of the de-identified text"
                    + (f"; {', '.join(flags)}" if flags else "")
                    + ")"
                }
            )
    return obs
