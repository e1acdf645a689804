"""Retention: finished items' data removed after the configured days, audited, and refused for
retry and replay afterwards; unfinished items and the rows themselves stay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fhirai import blobs
from fhirai.api.models import AccessEvent
from fhirai.audit.models import TimelineEvent
from fhirai.errors import NotFound
from fhirai.ingest.messages import messages_receive
from fhirai.ingest.models import Instance, Message, Rejection, Study, StudyState
from fhirai.ingest.receive import input_reject
from fhirai.ops.retention import retention_purge
from fhirai.ops.retry import NotRetryable, message_replay, study_replay
from fhirai.sweep import pipeline_sweep
from integrations.hl7.handlers import inbound_from
from tests.support import pipeline
from tests.support.hl7msg import adt

pytestmark = pytest.mark.django_db


def _age(study: Study, days: int, state: str = StudyState.WRITTEN_BACK) -> None:
    Study.objects.filter(pk=study.pk).update(
        state=state, state_changed_at=timezone.now() - timedelta(days=days)
    )


def _gone(key: str) -> bool:
    try:
        blobs.get(key)
    except NotFound:
        return True
    return False


def test_deidentified_copies_then_raw_data_go_after_their_days(settings, blob_dir, phantom):
    settings.FHIRAI_RETENTION_DEID_DAYS, settings.FHIRAI_RETENTION_RAW_DAYS = 7, 30
    study = pipeline.run_all(phantom, settings)
    instances = list(Instance.objects.filter(study=study))
    _age(study, 3)
    assert retention_purge() == {"studies_raw": 0, "studies_deid": 0, "messages": 0, "rejections": 0}
    _age(study, 8)
    assert pipeline_sweep()["studies_deid"] == 1  # the sweep runs it
    assert all(_gone(i.deid_blob_key) for i in instances)
    assert not any(_gone(i.blob_key) for i in instances)  # the data as received stays 30 days
    with pytest.raises(NotRetryable, match="retention policy"):
        study_replay(study.pk, actor="user:op")
    _age(study, 31)
    assert retention_purge()["studies_raw"] == 1
    assert all(_gone(i.blob_key) for i in instances)
    study.refresh_from_db()
    assert (
        study.raw_purged_at
        and study.deid_purged_at
        and Instance.objects.filter(study=study).count() == len(instances)
    )
    events = TimelineEvent.objects.filter(item_kind="study", item_id=study.pk, event="purged").order_by("id")
    details = [e.detail for e in events]
    assert len(details) == 2
    assert details[0] == f"retention: {len(instances)} de-identified copies removed after 7 days"
    assert details[1].startswith("retention: ") and "instances as received, SR and key images" in details[1]
    audit = AccessEvent.objects.filter(actor="system:retention", action="retention.purge")
    assert audit.count() == 2 and all(a.item_ids == [study.pk] for a in audit)
    assert retention_purge()["studies_raw"] == 0  # once


def test_unfinished_studies_and_a_zero_setting_keep_everything(settings, blob_dir, phantom):
    settings.FHIRAI_RETENTION_DEID_DAYS = settings.FHIRAI_RETENTION_RAW_DAYS = 1
    study = pipeline.run_all(phantom, settings)
    _age(study, 100, state=StudyState.QUEUED)
    assert retention_purge()["studies_deid"] == 0
    settings.FHIRAI_RETENTION_DEID_DAYS = settings.FHIRAI_RETENTION_RAW_DAYS = 0
    _age(study, 100)
    assert not any(retention_purge().values())


def test_message_bytes_and_kept_rejections_go_after_the_raw_days(settings, blob_dir):
    settings.FHIRAI_RETENTION_RAW_DAYS = 30
    stored = messages_receive([inbound_from(adt("RET-1"), "t")[1]])
    message_id = stored[0].message_id
    Message.objects.filter(pk=message_id).update(
        state="processed", received_at=timezone.now() - timedelta(days=31)
    )
    input_reject(
        protocol="dicom", raw=b"not dicom at all", peer="10.0.0.9", code="not-dicom", detail="no preamble"
    )
    Rejection.objects.update(received_at=timezone.now() - timedelta(days=31))
    key = Rejection.objects.get().blob_key
    counts = retention_purge()
    assert counts["messages"] == 1 and counts["rejections"] == 1
    message = Message.objects.get(pk=message_id)
    assert bytes(message.raw) == b"" and message.raw_purged_at is not None
    assert Rejection.objects.get().blob_key == "" and _gone(key)
    with pytest.raises(NotRetryable, match="retention policy"):
        message_replay(message_id, actor="user:op")
