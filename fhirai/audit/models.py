from __future__ import annotations

from django.db import models


class TimelineEvent(models.Model):
    """One hand-off of one item (a study today; messages and resources later): DESIGN invariant 5."""

    item_kind = models.CharField(max_length=16)
    item_id = models.BigIntegerField()
    event = models.CharField(max_length=24)
    at = models.DateTimeField()
    detail = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["item_kind", "item_id", "at"]),
            # The dashboard counts events of a few kinds per hour over a window: ranges that
            # PostgreSQL answers from the index alone (the included columns are all it reads).
            models.Index(fields=["event", "at"], name="timeline_event_at", include=["item_kind", "item_id"]),
        ]
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.item_kind}:{self.item_id} {self.event}"


class AuditForward(models.Model):
    """How far the audit trail has been forwarded to the site's audit repository (syslog): the last
    access record and the last export event sent. One row per destination; the sweep holds its lock
    while it sends, so several workers never send the same records twice at once."""

    name = models.CharField(max_length=32, unique=True)
    access_id = models.BigIntegerField(default=0)  # before sealing: the last access record's id
    # The last access record sent, by its place in the sealed chain (only sealed records are sent,
    # in chain order, so one committed late is not skipped).
    access_seq = models.BigIntegerField(default=0)
    timeline_id = models.BigIntegerField(default=0)
    sent = models.BigIntegerField(default=0)
    last_error = models.CharField(max_length=255, blank=True, default="")
    updated_at = models.DateTimeField(null=True, blank=True)
