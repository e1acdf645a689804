"""The audit trail to the site's audit repository (IHE ATNA's syslog transport): every access record
(who saw or changed what, fhirai.api.access) and every export (a result written back), in order,
as RFC 5424 messages whose body is the same FHIR R4 AuditEvent JSON that /fhir/AuditEvent serves.

Run from the sweep: a durable cursor per destination (AuditForward), advanced only after the
collector took the batch, so nothing is skipped when it is down (at least once: a crash between
sending and committing sends a batch again; the AuditEvent ids tell a collector it has them)."""

from __future__ import annotations

import json
import logging
import socket
from datetime import UTC

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from fhirai.audit.fhir import access_audit_event, audit_event
from fhirai.audit.models import AuditForward, TimelineEvent

log = logging.getLogger(__name__)
BATCH = 500
EXPORTS = ("written_back",)
FACILITY_AUTHPRIV = 10  # RFC 5424 facility 10 (security/authorization), as ATNA uses
NOTICE, WARNING = 5, 4


def syslog_message(resource: dict, *, at: object, failed: bool) -> bytes:
    """One RFC 5424 message: PRI, version 1, timestamp, host, app, procid, MSGID, no structured
    data, and the AuditEvent JSON as the (UTF-8, BOM-prefixed) message."""
    pri = FACILITY_AUTHPRIV * 8 + (WARNING if failed else NOTICE)
    stamp = at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")  # type: ignore[attr-defined]
    host = (socket.gethostname() or "-")[:255]
    body = json.dumps(resource, separators=(",", ":"), ensure_ascii=False)
    return f"<{pri}>1 {stamp} {host} fhirai - AuditEvent - ".encode() + b"\xef\xbb\xbf" + body.encode()


def audit_forward() -> int:
    """Send what the collector has not had yet (one batch); returns how many records were sent."""
    url = settings.FHIRAI_AUDIT_SYSLOG
    if not url:
        return 0
    from fhirai.api.access import audit_seal
    from fhirai.api.models import AccessEvent

    audit_seal()  # only sealed records travel: they carry their chain link
    with transaction.atomic():
        AuditForward.objects.get_or_create(name="syslog")
        cursor = AuditForward.objects.select_for_update(skip_locked=True).filter(name="syslog").first()
        if cursor is None:  # another worker is sending right now
            return 0
        access = list(AccessEvent.objects.filter(seq__gt=cursor.access_seq).order_by("seq")[:BATCH])
        exports = list(
            TimelineEvent.objects.filter(pk__gt=cursor.timeline_id, event__in=EXPORTS).order_by("id")[:BATCH]
        )
        if not access and not exports:
            return 0
        rows = sorted(
            [(e.at, 0, e) for e in access] + [(e.at, 1, e) for e in exports],
            key=lambda r: (r[0], r[1], r[2].pk),
        )
        messages = [
            syslog_message(access_audit_event(e), at=e.at, failed=e.action.startswith("login."))
            if kind == 0
            else syslog_message(audit_event(e), at=e.at, failed=bool(e.error))
            for _, kind, e in rows
        ]
        try:
            import_string(settings.FHIRAI_AUDIT_SYSLOG_SENDER)(url, messages)
        except OSError as exc:
            cursor.last_error = f"{type(exc).__name__}: {exc}"[:255]
            cursor.updated_at = timezone.now()
            cursor.save(update_fields=["last_error", "updated_at"])
            log.warning(
                "audit forwarding to syslog failed (%s); %d records wait", type(exc).__name__, len(rows)
            )
            return 0
        cursor.access_seq = access[-1].seq if access else cursor.access_seq
        cursor.timeline_id = exports[-1].pk if exports else cursor.timeline_id
        cursor.sent += len(rows)
        cursor.last_error = ""
        cursor.updated_at = timezone.now()
        cursor.save()
        return len(rows)
