"""The access audit: every API view or search of identified data, and every change made through
the API, is one AccessEvent row (who, role, what, which items). Timeline events say what happened
to an item; these say who looked at it.

The rows form a hash chain: each row's SHA-256 covers its own fields and the previous row's hash,
appended one at a time (a PostgreSQL advisory lock; SQLite's single writer), so a row changed or
removed afterwards breaks the chain where it was, and `audit_verify` finds it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC

from django.db import connection, transaction
from django.utils import timezone

from fhirai.api.auth import Principal
from fhirai.api.models import AccessEvent

MAX_IDS = 500


def access_record(
    principal: Principal, action: str, *, kind: str = "", ids: Iterable[int] = (), detail: str = ""
) -> AccessEvent:
    """Record that `principal` did `action` on these items (ids only; `detail` carries no PHI)."""
    return _append(
        at=timezone.now(),
        actor=principal.name[:160],
        role=principal.role,
        action=action[:32],
        item_kind=kind,
        item_ids=list(ids)[:MAX_IDS],
        detail=detail[:255],
    )


def login_record(action: str, *, username: str, detail: str) -> AccessEvent:
    """Record a console login event (failed, locked, refused) of a user name that has not
    authenticated: the actor is `login:<name as typed>`, the role empty; never the password."""
    return _append(
        at=timezone.now(),
        actor=f"login:{username.replace(chr(0), '').strip()}"[:160],  # PostgreSQL text holds no NUL
        role="",
        action=action[:32],
        detail=detail[:255],
    )


CHAIN_LOCK = 0x66686961  # the advisory lock that orders appends to the chain ("fhia")


def event_hash(event: AccessEvent) -> str:
    """SHA-256 (hex) over the row's fields and the previous row's hash, in a fixed JSON form."""
    fields = [
        event.at.astimezone(UTC).isoformat(),
        event.actor,
        event.role,
        event.action,
        event.item_kind,
        list(event.item_ids),
        event.detail,
        event.prev_hash,
    ]
    return hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()


def _append(**fields: object) -> AccessEvent:
    """Insert one row at the end of the chain."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK])
            prev = AccessEvent.objects.order_by("-id").values_list("hash", flat=True).first() or ""
            event = AccessEvent(**fields, prev_hash=prev)
            event.hash = event_hash(event)
            event.save()
            return event
        # SQLite: the INSERT takes the database's one write lock first, so the previous row read
        # next is the chain's real end even with several processes appending.
        event = AccessEvent.objects.create(**fields)
        event.prev_hash = (
            AccessEvent.objects.filter(id__lt=event.pk).order_by("-id").values_list("hash", flat=True).first()
            or ""
        )
        event.hash = event_hash(event)
        AccessEvent.objects.filter(pk=event.pk).update(prev_hash=event.prev_hash, hash=event.hash)
        return event


@dataclass(frozen=True)
class ChainCheck:
    rows: int  # rows checked (from the first chained one)
    unchained: int  # rows from before the chain existed (no hash), ahead of the first chained one
    broken_at: int | None  # id of the first row whose hash or link does not hold
    reason: str


def audit_verify() -> ChainCheck:
    """Walk the chain in id order: every row's hash must be its own, and link to the row before."""
    prev: str | None = None
    rows = unchained = 0
    for event in AccessEvent.objects.order_by("id").iterator(chunk_size=2000):
        if prev is None and not event.hash:
            unchained += 1
            continue
        rows += 1
        if not event.hash:
            return ChainCheck(rows, unchained, event.pk, "row has no hash inside the chain")
        if prev is not None and event.prev_hash != prev:
            return ChainCheck(
                rows, unchained, event.pk, "does not link to the row before (a row removed or inserted)"
            )
        if event_hash(event) != event.hash:
            return ChainCheck(rows, unchained, event.pk, "hash does not match the row (the row was changed)")
        prev = event.hash
    return ChainCheck(rows, unchained, None, "")
