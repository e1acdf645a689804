"""A study is complete after FHIRAI_STUDY_QUIET_SECONDS with no new instance."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fhirai.audit.timeline import Event
from fhirai.celery import TASK_DEIDENTIFY, dispatch_on_commit
from fhirai.ingest.models import Study, StudyState
from fhirai.ingest.state import study_transition


def studies_mark_complete() -> list[int]:
    """Mark every quiet receiving study complete and queue its de-identification; returns their ids."""
    cutoff = timezone.now() - timedelta(seconds=settings.FHIRAI_STUDY_QUIET_SECONDS)
    done = []
    quiet = Study.objects.filter(state=StudyState.RECEIVING, last_received_at__lte=cutoff)
    for study_id, revision, count in quiet.values_list("pk", "revision", "instance_count")[:200]:
        if study_mark_complete(study_id, revision=revision, detail=f"{count} instances, revision {revision}"):
            done.append(study_id)
    return done


def study_mark_complete(study_id: int, *, revision: int, detail: str = "") -> bool:
    """Close the study's receiving window (unless a new instance just reopened it)."""
    cutoff = timezone.now() - timedelta(seconds=settings.FHIRAI_STUDY_QUIET_SECONDS)
    with transaction.atomic():
        if not Study.objects.filter(pk=study_id, last_received_at__lte=cutoff).exists():
            return False
        moved = study_transition(
            study_id,
            from_states=[StudyState.RECEIVING],
            to=StudyState.COMPLETE,
            event=Event.COMPLETE,
            detail=detail,
            revision=revision,
        )
        if moved:
            dispatch_on_commit(TASK_DEIDENTIFY, study_id)
    return moved
