"""Study state changes: a conditional update that must change exactly one row, plus the timeline
event, in one transaction. Whoever wins the update owns the next step; a loser does nothing, so
a task delivered twice (broker redelivery, sweep re-dispatch) cannot do the work twice."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from fhirai.audit.timeline import Event, record
from fhirai.ingest.models import Study, StudyState
from fhirai.webhooks.events import study_event_emit

log = logging.getLogger(__name__)


def study_transition(
    study_id: int,
    *,
    from_states: Iterable[StudyState],
    to: StudyState,
    event: Event,
    detail: str = "",
    error: str = "",
    revision: int | None = None,
    revision_bump: bool = False,
    **fields: object,
) -> bool:
    """Move the study from one of `from_states` to `to` (and, if given, only at `revision`;
    `revision_bump` opens the next revision in the same update). True when this call made the change."""
    with transaction.atomic():
        qs = Study.objects.filter(pk=study_id, state__in=[s.value for s in from_states])
        if revision is not None:
            qs = qs.filter(revision=revision)
        if revision_bump:
            fields["revision"] = F("revision") + 1
        changed = qs.update(state=to.value, state_changed_at=timezone.now(), error=error, **fields)
        if changed:
            record("study", study_id, event, detail=detail, error=error)
            study_event_emit(study_id, to, error=error)  # webhooks: item.failed / item.completed
    if changed:
        log.info("study %s -> %s %s", study_id, to.value, detail)
    return bool(changed)


def study_fail(study_id: int, *, error: str, from_states: Iterable[StudyState] | None = None) -> bool:
    """Put the study in the visible failed state with its error (no PHI in `error`)."""
    states = (
        list(from_states)
        if from_states is not None
        else [s for s in StudyState if s not in (StudyState.FAILED, StudyState.RECEIVING)]
    )
    return study_transition(
        study_id, from_states=states, to=StudyState.FAILED, event=Event.FAILED, error=error
    )
