"""Inference jobs: route a de-identified study to its models, dispatch the runs on the
`inference` queue with de-identified inputs only, record what comes back."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from fhirai.audit.timeline import Event, record
from fhirai.celery import TASK_INFER, dispatch_on_commit
from fhirai.context.consent import clinical_report_optout, optout_detail, study_optout
from fhirai.context.models import ClinicalReport
from fhirai.deid.fhir import reference_pseudonym
from fhirai.deid.vault import vault_lookup
from fhirai.errors import NotFound
from fhirai.ingest.models import Study, StudyState
from fhirai.ingest.state import study_fail, study_transition
from fhirai.results.report import report_from_job, report_from_text_job, study_reidentify
from fhirai.results.task import job_task_put
from fhirai.routing.models import InferenceJob, JobState
from fhirai.routing.rules import report_models, series_select, study_is_qa, study_models

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3


def study_route(study_id: int) -> None:
    """Create one job per accepting model and queue it; a study no model accepts ends as no_model."""
    from fhirai.routing import priors  # built on this module (job_dispatch)

    study = Study.objects.get(pk=study_id)
    if study.state != StudyState.DEIDENTIFIED:
        return
    if study.role == priors.PRIOR_ROLE:
        priors.prior_study_routed(study)
        return
    opted_out = study_optout(study)
    if opted_out:  # the patient objects: no model sees it, and nothing of it is exported
        study_transition(
            study_id,
            from_states=[StudyState.DEIDENTIFIED],
            to=StudyState.NO_MODEL,
            event=Event.SKIPPED,
            detail=optout_detail(opted_out),
            revision=study.revision,
        )
        return
    models = study_models(study)
    if not models:
        qa = study_is_qa(study)
        study_transition(
            study_id,
            from_states=[StudyState.DEIDENTIFIED],
            to=StudyState.NO_MODEL,
            event=Event.SKIPPED,
            detail="daily QA / phantom study: no clinical model reads it"
            if qa
            else "no enabled model accepts this study",
            revision=study.revision,
        )
        return
    with transaction.atomic():
        if not study_transition(
            study_id,
            from_states=[StudyState.DEIDENTIFIED],
            to=StudyState.QUEUED,
            event=Event.QUEUED,
            detail=", ".join(str(m) for m in models),
            revision=study.revision,
        ):
            return
        for model in models:
            selection = series_select(model, study)
            inputs = [i.deid_blob_key for i in selection.inputs]
            if selection.dropped:  # left out, not failed: say which and why
                record(
                    "study",
                    study_id,
                    Event.SKIPPED,
                    detail=f"{model}: reads series of {len(inputs)} instance(s); left out "
                    + "; ".join(f"{uid[-12:]} ({why})" for uid, why in sorted(selection.dropped.items()))[
                        :1500
                    ],
                )
            wants_prior = bool(priors.model_priors(model))
            try:
                with transaction.atomic():
                    job = InferenceJob.objects.create(
                        study=study,
                        model=model,
                        revision=study.revision,
                        state=JobState.WAITING if wants_prior else JobState.QUEUED,
                        inputs=inputs,
                        dispatched_at=timezone.now(),
                        attempts=0 if wants_prior else 1,
                    )
            except IntegrityError:
                continue
            job_task_put(job)
            if wants_prior:
                priors.prior_fetch_start(job)  # dispatched once its prior is here (or is not to be had)
            else:
                job_dispatch(job)


def report_route(report_id: int) -> int:
    """Queue the enabled NLP models that read this clinical report's message type, on its
    de-identified text; returns how many jobs were created."""
    report = ClinicalReport.objects.select_related("message", "resource").filter(pk=report_id).first()
    if report is None or not report.deid_blob_key:
        return 0
    opted_out = clinical_report_optout(report)
    if opted_out:
        record(*report.timeline(), Event.SKIPPED, detail=optout_detail(opted_out))
        return 0
    created = 0
    for model in report_models(report.source_kind):
        try:
            with transaction.atomic():
                job = InferenceJob.objects.create(
                    clinical_report=report,
                    model=model,
                    revision=1,
                    inputs=[report.deid_blob_key],
                    dispatched_at=timezone.now(),
                    attempts=1,
                )
        except IntegrityError:
            continue
        record(*report.timeline(), Event.QUEUED, detail=f"report text to {model}")
        job_task_put(job)
        job_dispatch(job)
        created += 1
    return created


def job_dispatch(job: InferenceJob) -> None:
    """Queue the model run. The message names the model and the de-identified blob keys (of the
    study, and of its prior when the model reads one): ids and content hashes only (invariant 3)."""
    args: tuple[object, ...] = (job.pk, job.model.name, job.model.version, list(job.inputs))
    if job.prior_inputs:
        fetch = getattr(job, "prior_fetch", None)
        args += (list(job.prior_inputs), fetch.interval_days if fetch is not None else None)
    dispatch_on_commit(TASK_INFER, *args)


def job_record_result(job_id: int, output: dict[str, Any]) -> None:
    """Record a model's output and build the report, in one transaction; a second delivery of the
    same result changes nothing."""
    with transaction.atomic():
        job = (
            InferenceJob.objects.select_for_update(of=("self",))
            .select_related("study", "model")
            .filter(pk=job_id)
            .first()
        )
        if job is None or job.state != JobState.QUEUED:
            return
        if job.clinical_report_id is not None:
            _text_job_record_result(job, output)
            return
        study = job.study
        if study.revision != job.revision or study.state != StudyState.QUEUED:
            job.state, job.finished_at = JobState.SUPERSEDED, timezone.now()
            job.save(update_fields=["state", "finished_at"])
            job_task_put(job)
            return
        # The pseudonymous subject is checked against the vault when the report is built and is
        # not kept with the job: only the vault maps pseudonyms to this study.
        subject = output.pop("subject", None)
        if subject is not None:
            try:
                study_reidentify(study, subject)
            except (ValueError, NotFound) as exc:
                job.state, job.error, job.finished_at = JobState.FAILED, str(exc)[:2000], timezone.now()
                job.save(update_fields=["state", "error", "finished_at"])
                job_task_put(job)
                study_fail(study.pk, error=f"job {job.pk}: {exc}", from_states=[StudyState.QUEUED])
                return
        job.state, job.result, job.finished_at = JobState.DONE, output, timezone.now()
        job.save(update_fields=["state", "result", "finished_at"])
        record("study", study.pk, Event.INFERRED, detail=f"{job.model} job {job.pk}")
        if study.jobs.filter(revision=study.revision, state__in=[JobState.QUEUED, JobState.WAITING]).exists():
            job_task_put(job)
            return
        # The last job of the revision is in: one report per model that read the study.
        for done in study.jobs.filter(revision=study.revision, state=JobState.DONE).select_related(
            "study", "model"
        ):
            report_from_job(done)
            job_task_put(done)  # completed, with the report as output


def _text_job_record_result(job: InferenceJob, output: dict[str, Any]) -> None:
    """An NLP model's findings on a clinical report: check that the pseudonymous patient it names
    is the report's (through the vault), then build the report of findings."""
    clinical = ClinicalReport.objects.select_related("message", "resource", "patient").get(
        pk=job.clinical_report_id
    )
    subject = output.pop("subject", None) or {}
    if clinical.resource_id is not None:
        # A FHIR report: its de-identified subject reference is the keyed pseudonym of the real one.
        real = str(clinical.resource.content.get("subject", {}).get("reference", ""))
        if subject.get("patient_ref", "") != reference_pseudonym(real):
            _text_job_fail(job, clinical, "the result names another patient than the report's")
            return
    elif clinical.patient is not None and subject.get("patient_id"):
        try:
            original = vault_lookup("patient-id", subject["patient_id"], purpose="write-back")
        except NotFound as exc:
            _text_job_fail(job, clinical, str(exc))
            return
        if original.rpartition("\x1f")[2] != clinical.patient.mrn:
            _text_job_fail(job, clinical, "the result names another patient than the report's")
            return
    job.state, job.result, job.finished_at = JobState.DONE, output, timezone.now()
    job.save(update_fields=["state", "result", "finished_at"])
    record(*clinical.timeline(), Event.INFERRED, detail=f"{job.model} job {job.pk}")
    job.clinical_report = clinical
    report_from_text_job(job)
    job_task_put(job)


def _text_job_fail(job: InferenceJob, clinical: ClinicalReport, error: str) -> None:
    job.state, job.error, job.finished_at = JobState.FAILED, error[:2000], timezone.now()
    job.save(update_fields=["state", "error", "finished_at"])
    job_task_put(job)
    record(*clinical.timeline(), Event.FAILED, detail=f"{job.model} job {job.pk}", error=error[:500])


def job_fail(job_id: int, error: str) -> None:
    """A model could not run on this input: the job and the study fail visibly with the error."""
    with transaction.atomic():
        job = (
            InferenceJob.objects.select_for_update(of=("self",))
            .filter(pk=job_id, state=JobState.QUEUED)
            .first()
        )
        if job is None:
            return
        if job.clinical_report_id is not None:
            _text_job_fail(job, ClinicalReport.objects.get(pk=job.clinical_report_id), error)
            return
        job.state, job.error, job.finished_at = JobState.FAILED, error[:2000], timezone.now()
        job.save(update_fields=["state", "error", "finished_at"])
        job_task_put(job)
        study_fail(
            job.study_id,
            error=f"job {job.pk} ({job.model_id}): {error[:500]}",
            from_states=[StudyState.QUEUED],
        )


def jobs_redispatch_stalled() -> int:
    """Queue again the jobs whose run has not reported back within FHIRAI_INFERENCE_TIMEOUT
    (worker killed, broker message lost); after MAX_ATTEMPTS the job fails visibly."""
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.FHIRAI_INFERENCE_TIMEOUT)
    count = 0
    for job in InferenceJob.objects.filter(state=JobState.QUEUED, dispatched_at__lte=cutoff).select_related(
        "model"
    ):
        count += job_retry(job)
    return count


def job_retry(job: InferenceJob) -> int:
    """Dispatch a queued job again (conditional on nobody else having done so)."""
    if job.attempts >= MAX_ATTEMPTS:
        job_fail(job.pk, f"no result after {job.attempts} attempts")
        return 0
    with transaction.atomic():
        moved = InferenceJob.objects.filter(pk=job.pk, state=JobState.QUEUED, attempts=job.attempts).update(
            attempts=job.attempts + 1, dispatched_at=timezone.now()
        )
        if not moved:
            return 0
        record(
            *(("study", job.study_id) if job.study_id else job.clinical_report.timeline()),
            Event.RETRIED,
            detail=f"job {job.pk} dispatched again (attempt {job.attempts + 1})",
        )
        job.refresh_from_db()
        job_task_put(job)
        job_dispatch(job)
    return 1
