"""Inbound replay protection for /hooks/<source>: each accepted webhook-id is kept with its time,
and the unique constraint refuses a second one (409). A request older than the timestamp window is
refused by the signature check anyway, so receipts are kept a while past the window and pruned."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from fhirai.webhooks.models import HookReceipt


def hook_receipt_record(source: str, webhook_id: str) -> bool:
    """Keep this webhook-id for `source`; False when it was seen before (a replay)."""
    try:
        with transaction.atomic():
            HookReceipt.objects.create(source=source, webhook_id=webhook_id[:128], received_at=timezone.now())
    except IntegrityError:
        return False
    return True


def hook_receipt_forget(source: str, webhook_id: str) -> None:
    """Drop a receipt whose request was not taken (storage unavailable), so the sender's retry with
    the same webhook-id is not mistaken for a replay."""
    HookReceipt.objects.filter(source=source, webhook_id=webhook_id[:128]).delete()


def hook_receipts_prune() -> int:
    """Delete receipts older than twice the timestamp window: a replay of them is already stale."""
    cutoff = timezone.now() - timedelta(seconds=2 * settings.FHIRAI_HOOK_TOLERANCE_SECONDS + 60)
    deleted, _ = HookReceipt.objects.filter(received_at__lt=cutoff).delete()
    return deleted
