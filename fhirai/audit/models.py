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
