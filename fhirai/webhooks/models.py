"""Subscriptions, the delivery outbox and the inbound seen-id record. A delivery row is written in
the same transaction as the domain change it announces, so an event is never announced without
having happened, and never lost once it has (the sweep re-dispatches what a lost task dropped)."""

from __future__ import annotations

import base64
import secrets

from django.core.exceptions import ValidationError
from django.db import models

EVENTS = ("report.created", "item.failed", "item.completed", "delivery.failed")
SECRET_PREFIX = "whsec_"  # nosec B105  # the Standard Webhooks marker of a secret, not a secret
FILTER_KEYS = ("model", "source")


def secret_new() -> str:
    """A fresh Standard Webhooks secret: `whsec_` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_check(value: str) -> None:
    """Refuse a secret that is not `whsec_<base64>` (the Standard Webhooks secret format)."""
    if not value.startswith(SECRET_PREFIX):
        raise ValidationError("the secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except ValueError:
        raise ValidationError("the secret after whsec_ is not base64") from None
    if not 24 <= len(key) <= 64:
        raise ValidationError("the secret must decode to 24 to 64 bytes")


def events_check(value: object) -> None:
    if not isinstance(value, list) or not value or any(e not in EVENTS for e in value):
        raise ValidationError(f"events must be a non-empty list among {', '.join(EVENTS)}")


def filter_check(value: object) -> None:
    """{"model": "name" or ["a", "b"], "source": ...}: every key given must match the event."""
    if not isinstance(value, dict) or any(k not in FILTER_KEYS for k in value):
        raise ValidationError(f"the filter is an object with keys among {', '.join(FILTER_KEYS)}")
    for allowed in value.values():
        items = allowed if isinstance(allowed, list) else [allowed]
        if not all(isinstance(i, str) and i for i in items):
            raise ValidationError("filter values are strings or lists of strings")


class WebhookSubscription(models.Model):
    """An operator's subscription of one URL to some events, optionally narrowed by model/source."""

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list, validators=[events_check])
    filter = models.JSONField(default=dict, blank=True, validators=[filter_check])
    secret = models.CharField(max_length=120, default=secret_new, validators=[secret_check])
    # Payloads carry ids, states, pseudonyms and references only; names, MRNs, accession numbers
    # and birth dates are added for a subscriber the site has allowed to receive them.
    include_phi = models.BooleanField(default=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"webhook {self.name}"

    def matches(self, event_type: str, attrs: dict[str, str]) -> bool:
        """Subscribed to this event, and every filter key names the event's value for it (an event
        without that attribute does not match: a model filter never passes a model-less event)."""
        if not self.enabled or event_type not in (self.events or []):
            return False
        for key, allowed in (self.filter or {}).items():
            values = allowed if isinstance(allowed, list) else [allowed]
            if attrs.get(key) not in values:
                return False
        return True


class WebhookDeliveryState(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEAD = "dead"  # the dead-letter list: every attempt failed; webhook_replay sends it again


class WebhookDelivery(models.Model):
    """One event for one subscription (an outbox row). message_id is the event's webhook-id: the
    same on every retry and replay, so the receiver can drop duplicates."""

    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    event_type = models.CharField(max_length=32)
    message_id = models.CharField(max_length=64)
    payload = models.JSONField()
    state = models.CharField(
        max_length=16, choices=WebhookDeliveryState.choices, default=WebhookDeliveryState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_status = models.IntegerField(null=True, blank=True)
    last_response = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subscription", "message_id"], name="webhook_delivery_once")
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"webhook delivery {self.pk} ({self.event_type})"


class HookReceipt(models.Model):
    """A webhook-id accepted at /hooks/<source>: a second request with it is a replay (409)."""

    source = models.CharField(max_length=64)
    webhook_id = models.CharField(max_length=128)
    received_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "webhook_id"], name="hook_receipt_once")]
        indexes = [models.Index(fields=["received_at"])]
