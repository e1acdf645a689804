"""The four events, built where the domain makes them true (each hook is one line in the domain
module): what a payload carries is decided here, in one place. Payloads name ids, states,
pseudonyms, model names and FHIR references; identified data (name, MRN, accession, birth date)
goes only into data.phi, for subscriptions allowed it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings

from fhirai.ingest.models import Study, StudyState
from fhirai.webhooks.outbox import webhook_emit

if TYPE_CHECKING:
    from fhirai.results.models import Delivery, FhirResource

STUDY_EVENTS = {StudyState.FAILED.value: "item.failed", StudyState.WRITTEN_BACK.value: "item.completed"}
ERROR_LIMIT = 300


def report_created_emit(row: FhirResource, *, job: Any, study: Study | None, clinical_report: Any) -> int:
    """report.created: a DiagnosticReport version was stored (fhirai.results.report)."""
    model = job.model
    reference = f"DiagnosticReport/{row.rid}"
    data: dict[str, Any] = {
        "report": reference,
        "report_version": row.version_id,
        "report_url": f"{settings.FHIRAI_BASE_URL}/fhir/{reference}/_history/{row.version_id}",
        "status": row.content.get("status", ""),
        "model": {"name": model.name, "version": model.version},
        "job_id": job.pk,
        **_subject(study, clinical_report),
    }
    return webhook_emit(
        "report.created",
        data,
        attrs={"model": model.name, "source": _source(study, clinical_report)},
        phi=lambda: {**_study_phi(study), "subject": row.content.get("subject")},
        key=f"{reference}/_history/{row.version_id}",
    )


def study_event_emit(study_id: int, state: str, *, error: str = "") -> int:
    """item.failed / item.completed when a study reaches failed / written_back
    (fhirai.ingest.state.study_transition); other states announce nothing."""
    event = STUDY_EVENTS.get(str(state))
    if event is None:
        return 0
    study = Study.objects.get(pk=study_id)
    data: dict[str, Any] = {
        "item": {"type": "study", "id": study_id},
        "state": str(state),
        "revision": study.revision,
        **_subject(study, None),
        "reports": _study_reports(study_id),
    }
    if error:
        data["error"] = error[:ERROR_LIMIT]
    return webhook_emit(event, data, attrs={"source": study.calling_ae}, phi=lambda: _study_phi(study))


def writeback_failed_emit(delivery: Delivery, error: str) -> int:
    """delivery.failed: a write-back destination refused a report or stayed unreachable
    (fhirai.results.writeback)."""
    study = delivery.study if delivery.study_id is not None else None
    data: dict[str, Any] = {
        "delivery_id": delivery.pk,
        "destination": delivery.destination,
        "report": f"DiagnosticReport/{delivery.report.rid}",
        "report_version": delivery.report_version,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "error": error[:ERROR_LIMIT],
        **_subject(study, delivery.clinical_report if delivery.clinical_report_id else None),
    }
    return webhook_emit(
        "delivery.failed",
        data,
        attrs={"source": _source(study, None)},
        phi=lambda: _study_phi(study),
        key=f"{delivery.pk}/{delivery.attempts}",
    )


def _subject(study: Study | None, clinical_report: Any) -> dict[str, Any]:
    """The item the event is about and its patient's pseudonym (the one de-identified data uses)."""
    out: dict[str, Any] = {
        "study_id": study.pk if study is not None else None,
        "clinical_report_id": clinical_report.pk if clinical_report is not None else None,
    }
    if study is not None and study.patient_id:
        from fhirai.deid.profile import patient_pseudonym  # deid imports the ingest models

        out["patient_pseudonym"] = patient_pseudonym(study.patient_id, study.issuer_of_patient_id)
    return out


def _source(study: Study | None, clinical_report: Any) -> str:
    if study is not None:
        return study.calling_ae
    message = getattr(clinical_report, "message", None) if clinical_report is not None else None
    return getattr(message, "peer", "") or ("fhir" if clinical_report is not None else "")


def _study_reports(study_id: int) -> list[str]:
    from fhirai.results.models import FhirResource  # results imports this module's callers

    return [
        f"DiagnosticReport/{rid}"
        for rid in FhirResource.objects.filter(study_id=study_id, resource_type="DiagnosticReport")
        .values_list("rid", flat=True)
        .distinct()
    ]


def _study_phi(study: Study | None) -> dict[str, Any]:
    if study is None:
        return {}
    return {
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "patient_birth_date": study.patient_birth_date,
        "accession_number": study.accession_number,
    }
