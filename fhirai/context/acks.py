"""Enhanced-mode application acknowledgments (HL7 v2.5.1 ch. 2.9.3): once a message has been
applied, the sender is owed AA (applied) or AE (its content could not be applied) when its MSH-16
asks for it (AL always, ER on error only, SU on success only, NE never). The ACK goes, as a message
of its own, to the HL7 peer named like the sender's application (MSH-3) in FHIRAI_HL7_PEERS, with
its own small outbox on the message row: retried with backoff, a missing peer a visible failure."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from fhirai.audit.timeline import Event, record
from fhirai.celery import TASK_APP_ACK, dispatch_on_commit
from fhirai.errors import Unavailable
from fhirai.ingest.models import Message
from fhirai.results.destinations import hl7_peers
from fhirai.results.writeback import backoff

log = logging.getLogger(__name__)
PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"


class AckSender(Protocol):
    def __call__(self, peer: str, raw: bytes, *, codec: str, code: str, error: str) -> None:
        """Send the application ACK for the message `raw`; Unavailable when the peer cannot be reached."""


def app_ack_queue(message: Message, *, applied: bool, error: str = "") -> None:
    """Owe the sender an application ACK if its MSH-16 asks for one (inside the applying transaction)."""
    code = "AA" if applied else "AE"
    wanted = {"AL": True, "NE": False, "ER": not applied, "SU": applied}.get(message.app_ack, False)
    if not message.enhanced or not wanted:
        return
    message.app_ack_state, message.app_ack_code, message.app_ack_error = PENDING, code, error[:2000]
    message.app_ack_next_at = timezone.now()
    message.save(update_fields=["app_ack_state", "app_ack_code", "app_ack_error", "app_ack_next_at"])
    dispatch_on_commit(TASK_APP_ACK, message.pk)


def app_ack_send(message_id: int) -> None:
    """Send one owed application ACK if it is due and nobody else holds it."""
    now = timezone.now()
    if not Message.objects.filter(pk=message_id, app_ack_state=PENDING, app_ack_next_at__lte=now).update(
        app_ack_state=SENDING
    ):
        return
    message = Message.objects.get(pk=message_id)
    peer = message.sender.split("^", 1)[0]
    attempts = message.app_ack_attempts + 1
    if peer not in hl7_peers():
        _finish(
            message,
            FAILED,
            attempts,
            error=f"no HL7 peer named {peer} (FHIRAI_HL7_PEERS or the console) to send the application acknowledgment to",
        )
        return
    sender: AckSender = import_string(settings.FHIRAI_HL7_ACK_SENDER)
    try:
        sender(
            peer,
            bytes(message.raw),
            codec=message.codec,
            code=message.app_ack_code,
            error=message.app_ack_error,
        )
    except Unavailable as exc:
        Message.objects.filter(pk=message_id).update(
            app_ack_state=PENDING,
            app_ack_attempts=attempts,
            app_ack_next_at=timezone.now() + timedelta(seconds=backoff(attempts)),
        )
        log.warning("application ACK for message %s to %s failed (%s); retrying", message_id, peer, exc)
        return
    _finish(
        message, SENT, attempts, detail=f"application acknowledgment {message.app_ack_code} sent to {peer}"
    )


def _finish(message: Message, state: str, attempts: int, *, detail: str = "", error: str = "") -> None:
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(app_ack_state=state, app_ack_attempts=attempts)
        record(
            "message", message.pk, Event.ACKED if state == SENT else Event.FAILED, detail=detail, error=error
        )


def app_acks_due() -> int:
    """Dispatch owed ACKs whose retry is due, and free those stuck in sending (a killed worker)."""
    now = timezone.now()
    stalled = now - timedelta(seconds=settings.FHIRAI_STALL_SECONDS)
    Message.objects.filter(app_ack_state=SENDING, app_ack_next_at__lte=stalled).update(app_ack_state=PENDING)
    due = list(
        Message.objects.filter(app_ack_state=PENDING, app_ack_next_at__lte=now).values_list("pk", flat=True)[
            :100
        ]
    )
    for message_id in due:
        with transaction.atomic():
            dispatch_on_commit(TASK_APP_ACK, message_id)
    return len(due)
