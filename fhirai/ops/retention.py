"""Retention: after FHIRAI_RETENTION_RAW_DAYS, the data as received (DICOM instances, the SR and key
image built from them with the patient's identity, HL7 message bytes, kept rejections) is removed;
after FHIRAI_RETENTION_DEID_DAYS, the de-identified copies. Only items that are finished (a study
written back, routed to no model or failed; a message processed or failed) and unchanged for that
long. Rows, timelines, reports and the audit trail stay; each purge is a timeline event ("purged")
and an access record by `system:retention`, so who removed what, and when, can be shown.

Run from the sweep in bounded batches; a purged study or message can no longer be retried or
replayed (the ops say why)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fhirai import blobs
from fhirai.api.access import access_record
from fhirai.api.auth import Principal
from fhirai.audit.timeline import Event, record
from fhirai.errors import NotFound
from fhirai.ingest.models import Instance, Message, MessageState, Rejection, Study, StudyState
from fhirai.routing.models import InferenceJob
from fhirai.routing.rules import WITHHELD

log = logging.getLogger(__name__)
FINISHED = (StudyState.WRITTEN_BACK, StudyState.NO_MODEL, StudyState.FAILED)
BATCH = 50
RETENTION = Principal(name="system:retention", role="system", via="none")


def _remove(keys: list[str]) -> int:
    removed = 0
    for key in keys:
        if not key or key == WITHHELD:
            continue
        try:
            blobs.delete(key)
            removed += 1
        except NotFound:
            pass
    return removed


def _studies(field: str, days: int) -> list[int]:
    cutoff = timezone.now() - timedelta(days=days)
    return list(
        Study.objects.filter(state__in=FINISHED, state_changed_at__lte=cutoff, **{f"{field}__isnull": True})
        .order_by("id")
        .values_list("pk", flat=True)[:BATCH]
    )


def _purge_study(study_id: int, field: str, days: int, keys: list[str], what: str) -> bool:
    with transaction.atomic():
        # Claimed first (a row lock and a conditional update): two sweeps never purge one study twice,
        # and a study that was replayed meanwhile (no longer finished) is left alone.
        claimed = Study.objects.filter(pk=study_id, state__in=FINISHED, **{f"{field}__isnull": True}).update(
            **{field: timezone.now()}
        )
        if not claimed:
            return False
        removed = _remove(keys)
        record(
            "study", study_id, Event.PURGED, detail=f"retention: {removed} {what} removed after {days} days"
        )
    return True


def retention_purge() -> dict[str, int]:
    """One bounded pass; returns counts per kind (for the sweep's log and tests)."""
    counts = {"studies_raw": 0, "studies_deid": 0, "messages": 0, "rejections": 0}
    raw_days, deid_days = settings.FHIRAI_RETENTION_RAW_DAYS, settings.FHIRAI_RETENTION_DEID_DAYS
    purged: dict[str, list[int]] = {"study": [], "message": [], "rejection": []}
    if deid_days:
        for study_id in _studies("deid_purged_at", deid_days):
            keys = list(Instance.objects.filter(study_id=study_id).values_list("deid_blob_key", flat=True))
            if _purge_study(study_id, "deid_purged_at", deid_days, keys, "de-identified copies"):
                counts["studies_deid"] += 1
                purged["study"].append(study_id)
    if raw_days:
        for study_id in _studies("raw_purged_at", raw_days):
            keys = list(Instance.objects.filter(study_id=study_id).values_list("blob_key", flat=True))
            for sr, image in InferenceJob.objects.filter(study_id=study_id).values_list(
                "sr_blob_key", "key_image_blob_key"
            ):
                keys += [sr, image]
            if _purge_study(
                study_id, "raw_purged_at", raw_days, keys, "instances as received, SR and key images"
            ):
                counts["studies_raw"] += 1
                purged["study"].append(study_id)
        cutoff = timezone.now() - timedelta(days=raw_days)
        messages = list(
            Message.objects.filter(
                state__in=[MessageState.PROCESSED, MessageState.FAILED],
                received_at__lte=cutoff,
                raw_purged_at__isnull=True,
            )
            .order_by("id")
            .values_list("pk", flat=True)[: BATCH * 10]
        )
        for message_id in messages:
            with transaction.atomic():
                if Message.objects.filter(pk=message_id, raw_purged_at__isnull=True).update(
                    raw=b"", raw_purged_at=timezone.now()
                ):
                    record(
                        "message",
                        message_id,
                        Event.PURGED,
                        detail=f"retention: message bytes removed after {raw_days} days",
                    )
                    counts["messages"] += 1
                    purged["message"].append(message_id)
        for rejection in (
            Rejection.objects.filter(received_at__lte=cutoff).exclude(blob_key="").order_by("id")[:BATCH]
        ):
            _remove([rejection.blob_key])
            Rejection.objects.filter(pk=rejection.pk).update(blob_key="")
            counts["rejections"] += 1
            purged["rejection"].append(rejection.pk)
    for kind, ids in purged.items():
        if ids:
            access_record(RETENTION, "retention.purge", kind=kind, ids=ids, detail=f"{len(ids)} {kind}(s)")
    if any(counts.values()):
        log.info("retention: %s", counts)
    return counts
