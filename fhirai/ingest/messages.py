"""Durable receive of HL7 v2 messages, in batches: the listener hands over every message that
arrived while the previous commit ran, and all of them are committed in one transaction (group
commit) before any of their ACKs leaves. Idempotent on (sender, control ID).

The receive path does only what the ACK depends on: one INSERT and the COMMIT. Queuing the
processing (messages_dispatch) is left to the caller, off the ACK's path: the committed row is what
makes the message safe, and the sweep dispatches any message whose dispatch was lost. The
timeline's received and acked steps are the row's received_at (the ACK follows the commit)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from fhirai.audit.timeline import Event, events_for
from fhirai.celery import TASK_MESSAGES_PROCESS, dispatch
from fhirai.errors import InvalidInput, Unavailable
from fhirai.ingest.models import Message

log = logging.getLogger(__name__)

# The message types fhirai acts on (HL7 v2.5.1 ch. 3, 4, 7; OMI from v2.5 ch. 4.4).
SUPPORTED = {
    "ADT": {"A01", "A04", "A08", "A40"},
    "ORM": {"O01"},
    "OMI": {"O23"},
    "ORU": {"R01"},
}


@dataclass(frozen=True)
class Inbound:
    """What the listener read from the wire: the raw bytes and the header facts that identify them."""

    raw: bytes
    sender: str
    control_id: str
    message_type: str
    version: str
    codec: str
    peer: str = ""
    enhanced: bool = False
    app_ack: str = ""  # MSH-16 in enhanced mode


@dataclass(frozen=True)
class Stored:
    message_id: int
    duplicate: bool


def message_accepts(message_type: str) -> None:
    """Raise InvalidInput unless fhirai handles this MSH-9 (code^event)."""
    code, _, event = message_type.partition("^")
    if code not in SUPPORTED:
        raise InvalidInput("unsupported-message-type", f"message type {code} is not handled here")
    if event not in SUPPORTED[code]:
        raise InvalidInput("unsupported-event", f"event {code}^{event or '(empty)'} is not handled here")


def messages_receive(batch: list[Inbound]) -> list[Stored]:
    """Commit a batch of messages (one transaction) and queue their processing; returns, in order,
    each message's row and whether it was a resend. Raises Unavailable if the database cannot
    take them now (the listener then answers AR: nothing was acknowledged)."""
    try:
        return _commit(batch)
    except DatabaseError as exc:
        connection.close()  # a broken connection must not poison the next batch
        raise Unavailable(f"database: {type(exc).__name__}") from exc


def messages_dispatch(newest_id: int) -> None:
    """Queue the processing of every received message up to `newest_id` (one task covers them all,
    so callers may coalesce). A lost dispatch only delays: pipeline_sweep dispatches again."""
    dispatch(TASK_MESSAGES_PROCESS, [newest_id])


def message_events(message: Message) -> list[tuple[str, object, str, str]]:
    """The message's timeline: (event, at, detail, error), oldest first."""
    derived = [
        (Event.RECEIVED.value, message.received_at, f"from {message.peer}", ""),
        (Event.ACKED.value, message.received_at, "committed; acknowledgment sent", ""),
    ]
    return derived + [(e.event, e.at, e.detail, e.error) for e in events_for("message", message.pk)]


def _commit(batch: list[Inbound]) -> list[Stored]:
    keys = [(m.sender, m.control_id) for m in batch]
    sql, params = _insert_sql(batch, timezone.now(), connection.ops.quote_name)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            inserted = {(sender, control_id): pk for pk, sender, control_id in cursor.fetchall()}
        missing = [k for k in keys if k not in inserted]
        existing = {}
        if missing:
            for pk, sender, control_id in Message.objects.filter(
                sender__in={s for s, _ in missing}, control_id__in={c for _, c in missing}
            ).values_list("pk", "sender", "control_id"):
                existing[(sender, control_id)] = pk
    return _stored(keys, inserted, existing)


async def messages_receive_async(batch: list[Inbound], conn: psycopg.AsyncConnection[Any]) -> list[Stored]:
    """messages_receive on an asyncio PostgreSQL connection the caller owns: the same statement and
    guarantees, without a thread hop per batch (the MLLP listener's hot path on PostgreSQL)."""
    keys = [(m.sender, m.control_id) for m in batch]
    sql, params = _insert_sql(batch, timezone.now(), lambda name: f'"{name}"')
    try:
        async with conn.transaction():
            cursor = await conn.execute(sql, params)
            inserted = {(sender, control_id): pk for pk, sender, control_id in await cursor.fetchall()}
            missing = [k for k in keys if k not in inserted]
            existing = {}
            if missing:
                cursor = await conn.execute(
                    f'SELECT "id", "sender", "control_id" FROM "{Message._meta.db_table}" '  # nosec B608  # quoted table/column names from the models; values are bound parameters
                    'WHERE "sender" = ANY(%s) AND "control_id" = ANY(%s)',
                    ([s for s, _ in missing], [c for _, c in missing]),
                )
                existing = {(sender, control_id): pk for pk, sender, control_id in await cursor.fetchall()}
    except psycopg.Error as exc:
        raise Unavailable(f"database: {type(exc).__name__}") from exc
    return _stored(keys, inserted, existing)


def postgres_params() -> dict[str, Any] | None:
    """Connection keywords for psycopg from DATABASES['default'], or None when it is not PostgreSQL."""
    db = settings.DATABASES["default"]
    if "postgresql" not in db["ENGINE"]:
        return None
    params = {
        "dbname": db["NAME"],
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        "autocommit": True,
    }
    params.update({k: v for k, v in (db.get("OPTIONS") or {}).items() if k in _LIBPQ_OPTIONS})
    return {k: v for k, v in params.items() if v is not None}


_LIBPQ_OPTIONS = {
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "application_name",
    "target_session_attrs",
    "options",
}


def _stored(
    keys: list[tuple[str, str]], inserted: dict[tuple[str, str], int], existing: dict[tuple[str, str], int]
) -> list[Stored]:
    seen: set[int] = set()
    out = []
    for key in keys:
        pk = inserted.get(key) or existing[key]
        out.append(Stored(message_id=pk, duplicate=key not in inserted or pk in seen))
        seen.add(pk)
    return out


def _insert_sql(batch: list[Inbound], now: object, quote: Callable[[str], str]) -> tuple[str, list[object]]:
    """One multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING: resends (and repeats inside the
    batch) are refused by the unique constraint in the same round trip."""
    columns = [
        "sender",
        "control_id",
        "message_type",
        "version",
        "codec",
        "raw",
        "peer",
        "enhanced",
        "app_ack",
        "state",
        "error",
        "received_at",
    ]
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    params: list[object] = []
    for m in batch:
        params += [
            m.sender,
            m.control_id,
            m.message_type,
            m.version,
            m.codec,
            m.raw,
            m.peer[:128],
            m.enhanced,
            m.app_ack,
            "received",
            "",
            now,
        ]
    sql = (
        f"INSERT INTO {quote(Message._meta.db_table)} ({', '.join(quote(c) for c in columns)}) "  # nosec B608  # quoted table/column names from the models; values are bound parameters
        f"VALUES {', '.join([row] * len(batch))} "
        f"ON CONFLICT ({quote('sender')}, {quote('control_id')}) DO NOTHING "
        f"RETURNING {quote('id')}, {quote('sender')}, {quote('control_id')}"
    )
    return sql, params
