"""The timeline: one enum of past-tense steps and record(). Details carry ids and pseudonyms only."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from fhirai.audit.models import TimelineEvent


class Event(models.TextChoices):
    RECEIVED = "received"
    ACKED = "acked"
    COMPLETE = "complete"
    DEIDENTIFIED = "deidentified"
    QUEUED = "queued"
    INFERRED = "inferred"
    REPORTED = "reported"
    PROCESSED = "processed"
    WRITTEN_BACK = "written_back"
    SKIPPED = "skipped"
    PRIOR = "prior"
    RETRIED = "retried"
    REPLAYED = "replayed"
    FAILED = "failed"
    PURGED = "purged"  # retention: the item's stored data removed after the configured days


def record(kind: str, item_id: int, event: Event, *, detail: str = "", error: str = "") -> TimelineEvent:
    """Append one event to an item's timeline (call inside the transaction that made it true)."""
    return TimelineEvent.objects.create(
        item_kind=kind, item_id=item_id, event=event.value, at=timezone.now(), detail=detail, error=error
    )


def events_for(kind: str, item_id: int) -> list[TimelineEvent]:
    """The item's timeline, oldest first."""
    return list(TimelineEvent.objects.filter(item_kind=kind, item_id=item_id).order_by("at", "id"))
