"""The access audit: every API view or search of identified data, and every change made through
the API, is one AccessEvent row (who, role, what, which items). Timeline events say what happened
to an item; these say who looked at it.

The rows form a hash chain: each row's SHA-256 covers its own fields and the previous row's hash,
so a row changed or removed afterwards breaks the chain where it was, and `audit_verify` finds it.
Recording is a plain INSERT, so concurrent requests never wait on one another's commit; the chain
is sealed right after, in commit order, by `audit_seal` (from the sweep every few seconds, and
before every verification): one sealer at a time (a PostgreSQL advisory lock; SQLite's single
writer) gives each new row its place (`seq`), its link and its hash. Sealing is the only change
the database lets through (a trigger refuses every other UPDATE, and every DELETE)."""

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
    """Insert one row, unsealed (audit_seal links it into the chain)."""
    return AccessEvent.objects.create(**fields)


SEAL_BATCH = 5000


def audit_seal(limit: int = SEAL_BATCH) -> int:
    """Link the unsealed rows (those committed so far, in id order) onto the end of the chain;
    returns how many. Rows committed out of id order (a long transaction) are sealed when they
    become visible, after the rows already sealed: the chain's order is `seq`, not id."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK])
        pending = list(AccessEvent.objects.filter(hash="").order_by("id")[:limit])
        if not pending:
            return 0
        head = AccessEvent.objects.exclude(seq=None).order_by("-seq").values_list("seq", "hash").first()
        seq, prev = head if head is not None else (0, "")
        for event in pending:
            seq += 1
            event.seq, event.prev_hash = seq, prev
            event.hash = prev = event_hash(event)
        _sealed_save(pending)
    return len(pending)


def _sealed_save(events: list[AccessEvent]) -> None:
    if connection.vendor != "postgresql":
        AccessEvent.objects.bulk_update(events, ["seq", "prev_hash", "hash"], batch_size=500)
        return
    # One UPDATE from a VALUES list per 500 rows: several times faster than bulk_update's CASEs.
    with connection.cursor() as cursor:
        for start in range(0, len(events), 500):
            chunk = events[start : start + 500]
            rows = ", ".join(["(%s::bigint, %s::bigint, %s, %s)"] * len(chunk))
            sql = f"UPDATE api_accessevent AS a SET seq = v.seq, prev_hash = v.prev, hash = v.hash FROM (VALUES {rows}) AS v(id, seq, prev, hash) WHERE a.id = v.id"  # nosec B608  # placeholders only: no value in the SQL text
            cursor.execute(
                sql,
                [value for e in chunk for value in (e.pk, e.seq, e.prev_hash, e.hash)],
            )


@dataclass(frozen=True)
class ChainCheck:
    rows: int  # sealed rows checked
    unsealed: int  # rows recorded but not sealed yet (committed after the seal that preceded the check)
    broken_at: int | None  # id of the first row whose hash or link does not hold
    reason: str


def audit_verify(*, seal: bool = True) -> ChainCheck:
    """Seal what is pending (unless told not to), then walk the chain in seal order: every row's
    hash must be its own and link to the row before, and no position may be missing."""
    if seal:
        while audit_seal():
            pass
    prev, rows = "", 0
    for event in AccessEvent.objects.exclude(seq=None).order_by("seq").iterator(chunk_size=2000):
        rows += 1
        if event.seq != rows or event.prev_hash != prev:
            return ChainCheck(
                rows, 0, event.pk, "does not link to the row before (a row removed or inserted)"
            )
        if event_hash(event) != event.hash:
            return ChainCheck(rows, 0, event.pk, "hash does not match the row (the row was changed)")
        prev = event.hash
    unsealed = AccessEvent.objects.filter(seq=None).count()
    return ChainCheck(rows, unsealed, None, "")
