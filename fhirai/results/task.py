"""One FHIR Task per AI job (R4 workflow: https://hl7.org/fhir/R4/task.html), so an EHR or a
console can follow each model run: in-progress while queued on the inference tier, completed
with the DiagnosticReport as its output, failed with the reason, cancelled when a later revision
of the study superseded it. Identified (trusted side): it names the patient and the real study."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from fhirai.context.records import patient_reference
from fhirai.results.models import FhirResource
from fhirai.results.report import (
    device_resource,
    imaging_study_resource,
    order_reference,
    report_id,
    study_context,
)
from fhirai.results.resources import stable_id, system, validated
from fhirai.results.store import resource_put

STATUS = {
    "waiting": "on-hold",
    "queued": "in-progress",
    "done": "completed",
    "failed": "failed",
    "superseded": "cancelled",
}
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"


def job_task_put(job: Any) -> FhirResource:
    """Write (a new version of) the job's Task; call inside the transaction that changed the job."""
    if job.clinical_report_id is not None:
        return _text_job_task_put(job)
    study, model = job.study, job.model
    study_uid, subject, order = study_context(study)
    device = device_resource(model)
    imaging = imaging_study_resource(study, study_uid, subject)
    resource_put(validated(device))
    resource_put(validated(imaging), study_id=study.pk)
    key = f"{study_uid}\x1f{model.name}\x1f{model.version}\x1f{job.revision}"
    task = _task(job, key, device, f"{model.title} {model.version} on the de-identified images of the study")
    task["focus"] = {
        "reference": f"ImagingStudy/{imaging['id']}",
        "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"},
    }
    task["for"] = subject
    if order is not None:
        task["basedOn"] = [order_reference(order)]
    report = report_id(study_uid, model)
    if _report_written(job, report):
        task["output"] = [_output(report)]
    return resource_put(validated(task), study_id=study.pk)


def _task(job: Any, key: str, device: dict[str, Any], description: str) -> dict[str, Any]:
    """What every job's Task says: identity, status, the model as owner, the execution period,
    and why it failed."""
    model = job.model
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": stable_id("Task", key),
        "identifier": [{"system": system("job"), "value": stable_id("job", key)}],
        "status": STATUS.get(job.state, "in-progress"),
        "businessStatus": {"text": f"{job.state}, attempt {job.attempts}"},
        "intent": "order",
        "code": {
            "coding": [{"system": TASK_CODE, "code": "fulfill", "display": "Fulfill the focal request"}],
            "text": f"AI inference: {model.title}",
        },
        "description": description,
        "authoredOn": job.dispatched_at.isoformat(),
        "lastModified": timezone.now().isoformat(),
        "owner": {"reference": f"Device/{device['id']}", "display": f"{model.title} {model.version}"},
        "executionPeriod": {
            "start": job.dispatched_at.isoformat(),
            **({"end": job.finished_at.isoformat()} if job.finished_at else {}),
        },
    }
    if job.state == "failed" and job.error:
        task["statusReason"] = {"text": job.error[:500]}
    return task


def _report_written(job: Any, report: str) -> bool:
    return (
        job.state == "done"
        and FhirResource.objects.filter(resource_type="DiagnosticReport", rid=report).exists()
    )


def _output(report: str) -> dict[str, Any]:
    return {"type": {"text": "AI result"}, "valueReference": {"reference": f"DiagnosticReport/{report}"}}


def _text_job_task_put(job: Any) -> FhirResource:
    """The Task of an NLP job on a clinical report's text."""
    model, clinical = job.model, job.clinical_report
    device = device_resource(model)
    resource_put(validated(device))
    patient = clinical.patient.surviving() if clinical.patient else None
    key = f"{clinical.source_key()}\x1f{model.name}\x1f{model.version}"
    task = _task(
        job,
        key,
        device,
        f"{model.title} {model.version} on the de-identified text of {clinical.source_text()}",
    )
    if patient is not None:
        task["for"] = patient_reference(patient)
    report = stable_id("DiagnosticReport", key)
    if _report_written(job, report):
        task["focus"] = {"reference": f"DiagnosticReport/{report}"}
        task["output"] = [_output(report)]
    return resource_put(validated(task))
