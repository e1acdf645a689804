"""What fhirai keeps of FHIR Subscriptions it is notified by: one row per subscription on the
notifying server (its event counter, so a replayed notification changes nothing and a lost one is
seen), and one row per notification received, for inspection. Neither holds resource content."""

from __future__ import annotations

from django.db import models


class Kind(models.TextChoices):
    """The notification types of the Subscriptions Backport IG, plus the two R4 classic forms."""

    HANDSHAKE = "handshake"
    HEARTBEAT = "heartbeat"
    EVENT = "event-notification"
    QUERY_STATUS = "query-status"
    QUERY_EVENT = "query-event"
    REST_HOOK = "rest-hook"  # R4 classic: the changed resource is the body
    PING = "ping"  # R4 classic without payload: something changed, nothing to fetch
    UNREADABLE = "unreadable"  # the body could not be read as a notification at all


class NotificationStatus(models.TextChoices):
    RECEIVED = "received"  # being processed; a row left here means the process died mid-way
    PROCESSED = "processed"
    FAILED = "failed"


class Subscription(models.Model):
    """A topic-based subscription on the notifying server, keyed by the reference its
    notifications carry. `highest_event` is the highest event number known to exist (received, or
    counted by the server and recorded missing); `missed` lists, as [first, last] ranges, the
    numbers at or below it that never arrived, so a late retry of one of them is still applied."""

    reference = models.CharField(max_length=255, unique=True)
    topic = models.CharField(max_length=255, blank=True, default="")
    status = models.CharField(max_length=16, blank=True, default="")
    highest_event = models.PositiveBigIntegerField(default=0)
    events_since_start = models.PositiveBigIntegerField(null=True, blank=True)
    missed = models.JSONField(default=list, blank=True)
    missed_count = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField()
    handshake_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.reference


class Notification(models.Model):
    """One notification as received: who sent it, what it said, what became of it. `error` holds
    locations and messages only (never resource values); `resources` the Type/id received."""

    received_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    subscription = models.CharField(max_length=255, blank=True, default="", db_index=True)
    topic = models.CharField(max_length=255, blank=True, default="")
    kind = models.CharField(max_length=24, choices=Kind.choices, default=Kind.UNREADABLE)
    first_event = models.PositiveBigIntegerField(null=True, blank=True)
    last_event = models.PositiveBigIntegerField(null=True, blank=True)
    events_since_start = models.PositiveBigIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.RECEIVED
    )
    resources = models.JSONField(default=list, blank=True)
    detail = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.subscription or '(classic)'} at {self.received_at:%Y-%m-%d %H:%M:%S}"
