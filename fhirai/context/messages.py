"""Processing of committed HL7 messages: read (through the reader the wiring plugs in), then
patients, merges, orders and reports are updated. Messages are applied one at a time in the order
they were received, whichever worker picks them up, so an A08 never overtakes the A01 before it."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DataError, connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from fhirai.audit.timeline import Event, record
from fhirai.celery import TASK_MESSAGES_PROCESS, dispatch_on_commit
from fhirai.context.acks import app_ack_queue
from fhirai.context.consent import optout_set
from fhirai.context.facts import MessageFacts, MessageReader
from fhirai.context.models import ClinicalReport
from fhirai.context.received import order_received
from fhirai.context.records import patient_merge, patient_upsert
from fhirai.context.reports import reports_deidentify_dispatch
from fhirai.ingest.models import Message, MessageState

log = logging.getLogger(__name__)
_LOCK_KEY = 0x6668_6972  # "fhir": one advisory lock serializes message application


def reader() -> MessageReader:
    """The configured message reader (FHIRAI_HL7_READER)."""
    return import_string(settings.FHIRAI_HL7_READER)


def messages_process(up_to: int) -> int:
    """Apply every received message with id <= up_to, oldest first; returns how many."""
    done = 0
    while True:
        with transaction.atomic():
            _serialize()
            message = (
                Message.objects.filter(state=MessageState.RECEIVED, pk__lte=up_to).order_by("pk").first()
            )
            if message is None:
                return done
            message_apply(message)
        done += 1


def _serialize() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
    # SQLite: fhirai's transactions are BEGIN IMMEDIATE, already one writer at a time.


def message_apply(message: Message) -> None:
    """Apply one message inside the caller's transaction; a message that cannot be read fails
    visibly (its raw bytes stay for inspection and replay)."""
    try:
        facts = reader()(bytes(message.raw), codec=message.codec, message_type=message.message_type)
        # A savepoint: a value the database cannot store (too long for its column, a NUL) fails
        # this message alone instead of aborting the transaction and blocking every later message.
        with transaction.atomic():
            detail = _apply(message, facts)
    except (ValueError, DataError) as exc:
        # The database's text names the column type, never the value (no PHI in the error).
        error = str(exc) if isinstance(exc, ValueError) else _data_error(exc)
        message.state, message.error, message.processed_at = MessageState.FAILED, error[:2000], timezone.now()
        message.save(update_fields=["state", "error", "processed_at"])
        record("message", message.pk, Event.FAILED, error=error[:500])
        log.warning("message %s (%s) failed: %s", message.pk, message.message_type, error)
        app_ack_queue(message, applied=False, error=error)
        return
    message.state, message.processed_at = MessageState.PROCESSED, timezone.now()
    message.save(update_fields=["state", "processed_at"])
    record("message", message.pk, Event.PROCESSED, detail=detail)
    app_ack_queue(message, applied=True)


def _data_error(exc: DataError) -> str:
    return "a value cannot be stored: " + (str(exc).strip().splitlines() or ["?"])[0]


def _apply(message: Message, facts: MessageFacts) -> str:
    if facts.kind == "merge":
        if facts.patient is None or not facts.prior_patients:
            raise ValueError("a merge needs the surviving patient (PID) and the prior one (MRG)")
        survivor = None
        for prior in facts.prior_patients:
            survivor = patient_merge(facts.patient, prior)
        return f"merged {len(facts.prior_patients)} record(s) into patient {survivor.pk if survivor else '?'}"
    patient = patient_upsert(facts.patient) if facts.patient and facts.patient.mrn else None
    if patient is not None and facts.patient is not None and facts.patient.protection:
        optout_set(
            patient.mrn,
            system=patient.mrn_system,
            source="hl7",
            active=facts.patient.protection == "Y",
            reference=f"message {message.pk}",
        )
    if facts.kind == "patient":
        if patient is None:
            raise ValueError("PID-3 carries no patient identifier")
        return f"patient {patient.pk}"
    if facts.kind == "order":
        if facts.order is None or not facts.order.accession:
            raise ValueError("the order carries no accession number (OBR-18 / IPC-1)")
        order, study = order_received(facts.order, patient)
        return f"order {order.pk}" + (f", linked to study {study.pk}" if study else "")
    if facts.kind == "report":
        report = facts.report
        assert report is not None  # nosec B101  # narrows the type for mypy; under -O the next line fails the same way
        clinical, created = ClinicalReport.objects.get_or_create(
            message=message,
            defaults={
                "accession": report.accession,
                "placer_number": report.placer_number,
                "filler_number": report.filler_number,
                "status": report.status,
                "text": report.text,
                "patient": patient,
                "received_at": message.received_at,
            },
        )
        if created:
            reports_deidentify_dispatch(clinical.pk)
        return f"report text kept ({len(report.text)} characters)"
    raise ValueError(f"no handling for {facts.kind}")


def messages_redispatch_stalled(cutoff: datetime | None = None) -> int:
    """Received messages nobody processed within FHIRAI_STALL_SECONDS (the dispatch was lost);
    with `cutoff`, those received before it (start-up recovery passes now)."""
    if cutoff is None:
        cutoff = timezone.now() - timedelta(seconds=settings.FHIRAI_STALL_SECONDS)
    newest = (
        Message.objects.filter(state=MessageState.RECEIVED, received_at__lte=cutoff)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    if newest is None:
        return 0
    with transaction.atomic():
        dispatch_on_commit(TASK_MESSAGES_PROCESS, [newest])
    return 1
