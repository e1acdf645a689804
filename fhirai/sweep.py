"""The pipeline's heartbeat (every FHIRAI_SWEEP_SECONDS, from Celery beat): closes quiet studies,
and re-dispatches work whose message was lost (a worker killed mid-task, the embedded broker's
fetched-but-unacked messages after a crash) or whose retry is due. Every step it triggers is
idempotent, so a sweep that races a slow worker costs time, never a duplicate."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fhirai.api.access import audit_seal
from fhirai.assembly.complete import studies_mark_complete
from fhirai.audit.forward import audit_forward
from fhirai.audit.timeline import Event, record
from fhirai.celery import TASK_DEIDENTIFY, dispatch_on_commit
from fhirai.context.acks import app_acks_due
from fhirai.context.messages import messages_redispatch_stalled
from fhirai.context.reports import reports_redispatch_stalled
from fhirai.ingest.models import Study, StudyState
from fhirai.ops.retention import retention_purge
from fhirai.results.commitment import commitments_expire
from fhirai.results.writeback import deliveries_due, delivery_redispatch, written_back_reap
from fhirai.routing.jobs import job_retry, jobs_redispatch_stalled, study_route
from fhirai.routing.models import InferenceJob, JobState
from fhirai.routing.priors import priors_sweep
from fhirai.webhooks.outbox import webhooks_sweep

log = logging.getLogger(__name__)


def pipeline_sweep() -> dict[str, int]:
    """One pass; returns counts per action (for logs and tests)."""
    counts = {"completed": len(studies_mark_complete())}
    counts["deid_redispatched"] = _stalled_studies_redispatch(
        timezone.now() - timedelta(seconds=settings.FHIRAI_STALL_SECONDS)
    )
    counts["jobs_redispatched"] = jobs_redispatch_stalled()
    counts["priors_swept"] = priors_sweep()
    counts["commitments_expired"] = commitments_expire()
    counts["deliveries_dispatched"] = _deliveries_dispatch()
    counts["written_back_reaped"] = written_back_reap()
    counts["messages_redispatched"] = messages_redispatch_stalled()
    counts["app_acks_dispatched"] = app_acks_due()
    counts["reports_redispatched"] = reports_redispatch_stalled()
    counts["webhooks_dispatched"] = webhooks_sweep()
    counts["audit_sealed"] = audit_seal()
    counts["audit_forwarded"] = audit_forward()
    counts.update(retention_purge())
    if any(counts.values()):
        log.info("sweep: %s", counts)
    return counts


def pipeline_recover() -> dict[str, int]:
    """At start-up of the single-machine product, every worker of the previous run is gone:
    re-dispatch everything in flight now instead of waiting for the stall timeouts."""
    counts = {"deid_redispatched": _stalled_studies_redispatch(timezone.now())}
    jobs = InferenceJob.objects.filter(state=JobState.QUEUED).select_related("model")
    counts["jobs_redispatched"] = sum(job_retry(job) for job in jobs)
    counts["deliveries_dispatched"] = _deliveries_dispatch()
    counts["messages_redispatched"] = messages_redispatch_stalled(cutoff=timezone.now())
    return counts


def _deliveries_dispatch() -> int:
    due = deliveries_due()
    for delivery_id in due:
        with transaction.atomic():
            delivery_redispatch(delivery_id)
    return len(due)


def _stalled_studies_redispatch(cutoff: object) -> int:
    """Studies stuck in complete (de-identification lost) or deidentified (routing lost)."""
    count = 0
    for study_id, state in Study.objects.filter(
        state__in=[StudyState.COMPLETE, StudyState.DEIDENTIFIED], state_changed_at__lte=cutoff
    ).values_list("pk", "state")[:200]:
        with transaction.atomic():
            touched = Study.objects.filter(pk=study_id, state=state, state_changed_at__lte=cutoff).update(
                state_changed_at=timezone.now()
            )
            if not touched:
                continue
            record("study", study_id, Event.RETRIED, detail=f"{state} stage dispatched again")
            if state == StudyState.COMPLETE:
                dispatch_on_commit(TASK_DEIDENTIFY, study_id)
        if state == StudyState.DEIDENTIFIED:
            study_route(study_id)
        count += 1
    return count
