"""The webhook outbox: webhook_emit() writes one WebhookDelivery per matching subscription inside
the transaction that made the event true and dispatches its task on commit; webhook_deliver()
claims a due row, hands it to the configured sender (FHIRAI_WEBHOOK_SENDER, an adapter in
integrations/webhooks) and records the answer. Failures retry with exponential backoff and jitter
(5 s, 30 s, 3 min, 18 min, then FHIRAI_WEBHOOK_BACKOFF_MAX) until FHIRAI_WEBHOOK_MAX_ATTEMPTS,
then the row is dead (the dead-letter list) until webhook_replay() sends it again under the same
webhook-id. pipeline_sweep calls webhooks_sweep() for rows whose task was lost."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from fhirai.celery import TASK_WEBHOOK_DELIVER, dispatch_on_commit
from fhirai.errors import NotFound, Unavailable
from fhirai.webhooks.models import EVENTS, WebhookDelivery, WebhookDeliveryState, WebhookSubscription
from fhirai.webhooks.receipts import hook_receipts_prune

log = logging.getLogger(__name__)
FIRST_DELAY = 5.0
GROWTH = 6.0
JITTER = 0.25  # each delay is spread over +-25% so receivers that failed together retry apart


@dataclass(frozen=True)
class SendReply:
    status: int
    body: str


class WebhookSender(Protocol):
    def __call__(self, url: str, *, secret: str, message_id: str, body: bytes, timeout: float) -> SendReply:
        """POST `body` signed with `secret` under `message_id` (Standard Webhooks). Raises
        Unavailable when the receiver cannot be reached or does not answer in time."""


def message_id_for(event_type: str, key: str = "") -> str:
    """The event's webhook-id: derived from a natural key when there is one (an event emitted twice
    for the same fact gets the same id, and the outbox's unique constraint keeps one row), random
    otherwise."""
    if key:
        return "msg_" + hashlib.sha256(f"{event_type}\x1f{key}".encode()).hexdigest()[:32]
    return "msg_" + uuid.uuid4().hex


def webhook_emit(
    event_type: str,
    data: dict[str, Any],
    *,
    attrs: dict[str, str] | None = None,
    phi: Callable[[], dict[str, Any]] | None = None,
    key: str = "",
) -> int:
    """Queue `data` (ids, states, pseudonyms, references: no PHI) for every enabled subscription to
    this event whose filter matches `attrs`; `phi()` is added as data.phi only for subscriptions
    allowed PHI. Call inside the transaction that made the event true. Returns the rows queued."""
    if event_type not in EVENTS:
        raise ValueError(f"unknown webhook event {event_type}")
    subs = [s for s in WebhookSubscription.objects.filter(enabled=True) if s.matches(event_type, attrs or {})]
    if not subs:
        return 0
    now = timezone.now()
    message_id = message_id_for(event_type, key)
    envelope = {"type": event_type, "timestamp": now.isoformat(), "data": data}
    extra = phi() if phi is not None and any(s.include_phi for s in subs) else None
    queued = 0
    for sub in subs:
        payload = {**envelope, "data": {**data, "phi": extra}} if sub.include_phi and extra else envelope
        delivery, created = WebhookDelivery.objects.get_or_create(
            subscription=sub,
            message_id=message_id,
            defaults={
                "event_type": event_type,
                "payload": payload,
                "created_at": now,
                "next_attempt_at": now,
            },
        )
        if created:
            dispatch_on_commit(TASK_WEBHOOK_DELIVER, delivery.pk)
            queued += 1
    return queued


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failures: 5, 30, 180, 1080 ... capped at
    FHIRAI_WEBHOOK_BACKOFF_MAX, with jitter."""
    delay = min(settings.FHIRAI_WEBHOOK_BACKOFF_MAX, FIRST_DELAY * GROWTH ** max(0, attempts - 1))
    return delay * random.uniform(1 - JITTER, 1 + JITTER)  # nosec B311  # retry jitter, not a secret


def sender() -> WebhookSender:
    """The configured sender adapter (FHIRAI_WEBHOOK_SENDER)."""
    return import_string(settings.FHIRAI_WEBHOOK_SENDER)


def webhook_deliver(delivery_id: int) -> None:
    """Send one delivery if it is due and nobody else holds it; 2xx is delivered, anything else
    (or no answer) is retried later or, after the last attempt, dead."""
    now = timezone.now()
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, state=WebhookDeliveryState.PENDING, next_attempt_at__lte=now
    ).update(state=WebhookDeliveryState.SENDING, claimed_at=now)
    if not claimed:
        return
    delivery = WebhookDelivery.objects.select_related("subscription").get(pk=delivery_id)
    sub = delivery.subscription
    status: int | None = None
    if not sub.enabled:
        ok, answer = False, "the subscription is disabled"
    else:
        try:
            reply = sender()(
                sub.url,
                secret=sub.secret,
                message_id=delivery.message_id,
                body=payload_bytes(delivery.payload),
                timeout=settings.FHIRAI_WEBHOOK_TIMEOUT,
            )
            status, answer, ok = reply.status, reply.body, 200 <= reply.status < 300
        except Unavailable as exc:
            ok, answer = False, str(exc)
    _delivery_record(delivery, ok=ok, status=status, answer=answer, final=not sub.enabled)


def payload_bytes(payload: dict[str, Any]) -> bytes:
    """The body as sent: compact JSON, the same bytes on every attempt."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def _delivery_record(
    delivery: WebhookDelivery, *, ok: bool, status: int | None, answer: str, final: bool
) -> None:
    now = timezone.now()
    delivery.attempts += 1
    delivery.last_status, delivery.last_response = status, answer[:4000]
    if ok:
        delivery.state, delivery.delivered_at = WebhookDeliveryState.DELIVERED, now
    elif final or delivery.attempts >= settings.FHIRAI_WEBHOOK_MAX_ATTEMPTS:
        delivery.state = WebhookDeliveryState.DEAD
        log.warning(
            "webhook delivery %s (%s) dead after %s attempt(s), last status %s",
            delivery.pk,
            delivery.event_type,
            delivery.attempts,
            status,
        )
    else:
        delivery.state = WebhookDeliveryState.PENDING
        delivery.next_attempt_at = now + timedelta(seconds=backoff(delivery.attempts))
        log.info("webhook delivery %s attempt %s failed (status %s)", delivery.pk, delivery.attempts, status)
    delivery.save(
        update_fields=["attempts", "last_status", "last_response", "state", "delivered_at", "next_attempt_at"]
    )


def webhook_replay(delivery_id: int) -> bool:
    """Send a dead delivery again (the console's replay): back to pending with its attempts reset,
    under the same webhook-id. False when it is not dead (already replayed, or never died)."""
    if not WebhookDelivery.objects.filter(pk=delivery_id).exists():
        raise NotFound(f"webhook delivery {delivery_id} does not exist")
    with transaction.atomic():
        changed = WebhookDelivery.objects.filter(pk=delivery_id, state=WebhookDeliveryState.DEAD).update(
            state=WebhookDeliveryState.PENDING,
            attempts=0,
            next_attempt_at=timezone.now(),
            claimed_at=None,
        )
        if changed:
            dispatch_on_commit(TASK_WEBHOOK_DELIVER, delivery_id)
    return bool(changed)


def webhooks_dead() -> list[WebhookDelivery]:
    """The dead-letter list, newest first (for the console)."""
    return list(
        WebhookDelivery.objects.filter(state=WebhookDeliveryState.DEAD)
        .select_related("subscription")
        .order_by("-created_at")[:500]
    )


def webhooks_sweep() -> int:
    """For pipeline_sweep: rows stuck in sending past FHIRAI_STALL_SECONDS go back to pending, due
    pending rows are dispatched again, and old inbound receipts are pruned. Returns the dispatches."""
    now = timezone.now()
    stalled = now - timedelta(seconds=settings.FHIRAI_STALL_SECONDS)
    WebhookDelivery.objects.filter(state=WebhookDeliveryState.SENDING, claimed_at__lte=stalled).update(
        state=WebhookDeliveryState.PENDING, next_attempt_at=now
    )
    due = list(
        WebhookDelivery.objects.filter(
            state=WebhookDeliveryState.PENDING, next_attempt_at__lte=now
        ).values_list("pk", flat=True)[:100]
    )
    with transaction.atomic():
        for delivery_id in due:
            dispatch_on_commit(TASK_WEBHOOK_DELIVER, delivery_id)
    hook_receipts_prune()
    return len(due)
