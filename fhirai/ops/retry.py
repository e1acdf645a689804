"""Operator retry of a failed item: restart it from the stage where it failed, reusing the
pipeline's own idempotent steps. Per failure kind:

- inference: the failed jobs of the current revision are queued again with a fresh attempt
  count (the unique study/model/revision job is reused, never duplicated), the study goes back
  to queued;
- write-back: the failed deliveries of the report's current version go back to pending and are
  dispatched now, the study goes back to reported (write-back completes it as usual);
- otherwise (de-identification or anything earlier): the study goes back to complete and the
  de-identification task is dispatched; it skips instances already done and then routes.

Replay runs a finished item through the pipeline again: a study opens a new revision (the same
path a late instance takes: de-identification, routing, new jobs, an amended report), an HL7
message is applied again as received. Retry and replay of HL7 messages and FHIR-sourced clinical
reports follow the same rules.

Each restart is a conditional update from failed: a second retry, or a retry of an item that did
not fail, changes nothing and raises NotRetryable (the API answers 409). Every retry is recorded
on the item's timeline with who asked."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from fhirai.audit.timeline import Event, record
from fhirai.celery import TASK_DEIDENTIFY, TASK_MESSAGES_PROCESS, dispatch_on_commit
from fhirai.context.models import ClinicalReport
from fhirai.errors import FhiraiError, NotFound
from fhirai.ingest.models import Message, MessageState, Study, StudyState
from fhirai.ingest.state import study_transition
from fhirai.results.models import Delivery, DeliveryState
from fhirai.results.task import job_task_put
from fhirai.results.writeback import delivery_redispatch
from fhirai.routing.jobs import job_dispatch
from fhirai.routing.models import InferenceJob, JobState
from fhirai.routing.priors import model_priors, prior_job_restart


class NotRetryable(FhiraiError):
    """The item is not in a failed state (nothing to retry, or someone already retried it)."""


def _failed_jobs(study: Study) -> list[InferenceJob]:
    return list(
        InferenceJob.objects.filter(study=study, revision=study.revision, state=JobState.FAILED)
        .select_related("model")
        .order_by("id")
    )


def _failed_deliveries(study: Study) -> list[Delivery]:
    return list(
        Delivery.objects.filter(
            study=study, state=DeliveryState.FAILED, report_version=F("report__version_id")
        ).order_by("id")
    )


def study_retry_kind(study: Study) -> str:
    """Which stage a failed study restarts from: inference, write-back or de-identification."""
    if _failed_jobs(study):
        return "inference"
    if _failed_deliveries(study):
        return "write-back"
    return "de-identification"


def _not_purged(study: Study) -> None:
    when = study.raw_purged_at or study.deid_purged_at
    if when is not None:
        raise NotRetryable(
            f"study {study.pk}: its data was removed under the retention policy on {when:%Y-%m-%d}; it cannot run again"
        )


def study_retry(study_id: int, *, actor: str) -> tuple[str, str]:
    """Restart a failed study from the stage it failed at; returns (kind, detail)."""
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        raise NotFound(f"no study {study_id}")
    if study.state != StudyState.FAILED:
        raise NotRetryable(f"study {study_id} is {study.state}, not failed: nothing to retry")
    _not_purged(study)
    kind = study_retry_kind(study)
    with transaction.atomic():
        if kind == "inference":
            jobs = _failed_jobs(study)
            detail = (
                f"retry by {actor}: {len(jobs)} job(s) queued again ({', '.join(str(j.pk) for j in jobs)})"
            )
            _restart(study, StudyState.QUEUED, detail)
            for job in jobs:
                _job_requeue(job)
        elif kind == "write-back":
            deliveries = _failed_deliveries(study)
            detail = f"retry by {actor}: {len(deliveries)} delivery(ies) to " + ", ".join(
                sorted({d.destination for d in deliveries})
            )
            _restart(study, StudyState.REPORTED, detail)
            for delivery in deliveries:
                _delivery_requeue(delivery)
        else:
            detail = f"retry by {actor}: de-identification dispatched again"
            _restart(study, StudyState.COMPLETE, detail)
            dispatch_on_commit(TASK_DEIDENTIFY, study_id)
    return kind, detail


def _restart(study: Study, to: StudyState, detail: str) -> None:
    if not study_transition(
        study.pk,
        from_states=[StudyState.FAILED],
        to=to,
        event=Event.RETRIED,
        detail=detail,
        revision=study.revision,
    ):
        raise NotRetryable(f"study {study.pk} changed meanwhile (someone else retried it?)")


def _job_requeue(job: InferenceJob) -> None:
    """A failed job runs again from attempt 1 (conditional: only if it is still failed); a model
    that reads a prior starts again from the search for it."""
    if job.study_id is not None and model_priors(job.model):
        prior_job_restart(job)
        return
    moved = InferenceJob.objects.filter(pk=job.pk, state=JobState.FAILED).update(
        state=JobState.QUEUED, attempts=1, error="", finished_at=None, dispatched_at=timezone.now()
    )
    if moved:
        job.refresh_from_db()
        job_task_put(job)
        job_dispatch(job)


def _delivery_requeue(delivery: Delivery) -> bool:
    """A failed delivery goes back to the outbox, due now (conditional: only if still failed)."""
    moved = Delivery.objects.filter(pk=delivery.pk, state=DeliveryState.FAILED).update(
        state=DeliveryState.PENDING, next_attempt_at=timezone.now(), claimed_at=None
    )
    if moved:
        delivery_redispatch(delivery.pk)
    return bool(moved)


def delivery_retry(delivery_id: int, *, actor: str) -> str:
    """Send one failed delivery again. When it was the last failed delivery of a failed study, the
    study goes back to reported, so a success completes it; returns a one-line account."""
    delivery = Delivery.objects.select_related("clinical_report").filter(pk=delivery_id).first()
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id}")
    if delivery.state != DeliveryState.FAILED:
        raise NotRetryable(f"delivery {delivery_id} is {delivery.state}, not failed: nothing to retry")
    detail = f"retry by {actor}: delivery {delivery_id} to {delivery.destination} sent again"
    study = delivery.study if delivery.study_id is not None else None
    # Only a study that failed at write-back goes back to reported (not one whose model failed).
    writeback_failed = (
        study is not None and study.state == StudyState.FAILED and study_retry_kind(study) == "write-back"
    )
    with transaction.atomic():
        if not _delivery_requeue(delivery):
            raise NotRetryable(f"delivery {delivery_id} changed meanwhile (someone else retried it?)")
        if study is not None and writeback_failed and not _failed_deliveries(study):
            _restart(study, StudyState.REPORTED, detail)
        elif study is not None:
            record("study", study.pk, Event.RETRIED, detail=detail)
        elif delivery.clinical_report is not None:
            record(*delivery.clinical_report.timeline(), Event.RETRIED, detail=detail)
    return detail


REPLAYABLE = (StudyState.WRITTEN_BACK, StudyState.NO_MODEL, StudyState.FAILED)


def study_replay(study_id: int, *, actor: str) -> str:
    """Run a finished (written back, no model, or failed) study through the pipeline again as a new revision: its
    instances are de-identified (those already done are reused), routed, inferred, and the report
    is written again as an amendment. Refused (NotRetryable) while the study is still in progress,
    so pressing replay twice starts one revision, not two."""
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        raise NotFound(f"no study {study_id}")
    _not_purged(study)
    detail = f"replay by {actor}: revision {study.revision + 1} through the pipeline"
    with transaction.atomic():
        moved = study_transition(
            study.pk,
            from_states=REPLAYABLE,
            to=StudyState.COMPLETE,
            event=Event.REPLAYED,
            detail=detail,
            revision=study.revision,
            revision_bump=True,
        )
        if not moved:
            raise NotRetryable(
                f"study {study_id} is {study.state}: only a finished study (written back, no model, failed) can be replayed"
            )
        dispatch_on_commit(TASK_DEIDENTIFY, study_id)
    return detail


def _message_again(message_id: int, *, from_states: list[str], event: Event, detail: str) -> None:
    if Message.objects.filter(pk=message_id, raw_purged_at__isnull=False).exists():
        raise NotRetryable(f"message {message_id}: its bytes were removed under the retention policy")
    with transaction.atomic():
        moved = Message.objects.filter(pk=message_id, state__in=from_states).update(
            state=MessageState.RECEIVED, error="", processed_at=None
        )
        if not moved:
            raise NotRetryable(f"message {message_id} changed meanwhile (someone else retried it?)")
        record("message", message_id, event, detail=detail)
        dispatch_on_commit(TASK_MESSAGES_PROCESS, [message_id])


def message_retry(message_id: int, *, actor: str) -> str:
    """Apply a failed HL7 message again (after its cause was fixed: a missing patient, an order)."""
    message = Message.objects.filter(pk=message_id).only("state").first()
    if message is None:
        raise NotFound(f"no message {message_id}")
    if message.state != MessageState.FAILED:
        raise NotRetryable(f"message {message_id} is {message.state}, not failed: nothing to retry")
    detail = f"retry by {actor}: applied again"
    _message_again(message_id, from_states=[MessageState.FAILED], event=Event.RETRIED, detail=detail)
    return detail


def message_replay(message_id: int, *, actor: str) -> str:
    """Apply a processed or failed HL7 message again, as received (a report message already kept
    is not kept twice)."""
    message = Message.objects.filter(pk=message_id).only("state").first()
    if message is None:
        raise NotFound(f"no message {message_id}")
    if message.state not in (MessageState.PROCESSED, MessageState.FAILED):
        raise NotRetryable(f"message {message_id} is {message.state}: it has not been applied yet")
    detail = f"replay by {actor}: applied again as received"
    _message_again(
        message_id,
        from_states=[MessageState.PROCESSED, MessageState.FAILED],
        event=Event.REPLAYED,
        detail=detail,
    )
    return detail


def report_retry(report_id: int, *, actor: str) -> str:
    """A clinical report's failed NLP jobs queued again, or its failed deliveries sent again."""
    report = ClinicalReport.objects.filter(pk=report_id).first()
    if report is None:
        raise NotFound(f"no clinical report {report_id}")
    jobs = list(
        InferenceJob.objects.filter(clinical_report=report, state=JobState.FAILED).select_related("model")
    )
    deliveries = list(
        Delivery.objects.filter(
            clinical_report=report, state=DeliveryState.FAILED, report_version=F("report__version_id")
        )
    )
    if not jobs and not deliveries:
        if not report.deid_blob_key:
            from fhirai.context.reports import reports_deidentify_dispatch

            with transaction.atomic():
                detail = f"retry by {actor}: de-identification dispatched again"
                record(*report.timeline(), Event.RETRIED, detail=detail)
                reports_deidentify_dispatch(report.pk)
            return detail
        raise NotRetryable(f"clinical report {report_id} has nothing failed to retry")
    with transaction.atomic():
        for job in jobs:
            _job_requeue(job)
        for delivery in deliveries:
            _delivery_requeue(delivery)
        detail = f"retry by {actor}: {len(jobs)} job(s), {len(deliveries)} delivery(ies) again"
        record(*report.timeline(), Event.RETRIED, detail=detail)
    return detail
