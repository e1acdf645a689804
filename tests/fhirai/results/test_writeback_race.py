"""A study with two destinations whose deliveries finish at the same moment in two workers: found
by the fault suite, where such a study stayed `reported` for good (each worker saw the other's
delivery still sending). Needs real concurrent transactions, hence PostgreSQL and threads."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from fhirai.ingest.models import Study, StudyState
from fhirai.results import writeback
from fhirai.results.models import Delivery, DeliveryState
from fhirai.sweep import pipeline_sweep
from tests.support import pipeline
from tests.support.fhir_upstream import FhirUpstream
from tests.support.mllp_peer import MllpPeer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def two_destinations(settings, blob_dir, phantom):
    with FhirUpstream() as up, MllpPeer() as peer:
        settings.FHIRAI_FHIR_UPSTREAM_URL = up.url
        settings.FHIRAI_HL7_PEERS = {"EHR": ("127.0.0.1", peer.port)}
        settings.FHIRAI_HL7_TIMEOUT = 5
        pipeline.run_all(phantom, settings)
        deliveries = list(Delivery.objects.order_by("destination"))
        assert len(deliveries) == 2
        yield deliveries


def test_two_deliveries_finishing_together_move_the_study_to_written_back(two_destinations, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent transactions need PostgreSQL")
    # Each worker that finds the other destination still open records a timeline event and
    # commits. Hold that moment until both got there: without the study lock both get there
    # (and the study stays reported); with it the second waits for the first to commit, the
    # barrier times out, and the second sees the first's delivery done.
    barrier = threading.Barrier(2, timeout=3)
    real_record = writeback.record

    def record_then_meet(*args, **kwargs):
        out = real_record(*args, **kwargs)
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return out

    monkeypatch.setattr(writeback, "record", record_then_meet)
    errors: list[BaseException] = []

    def attempt(pk: int) -> None:
        try:
            writeback.delivery_attempt(pk)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=(d.pk,)) for d in two_destinations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert set(Delivery.objects.values_list("state", flat=True)) == {DeliveryState.DELIVERED}
    assert Study.objects.get().state == StudyState.WRITTEN_BACK


def test_the_sweep_moves_a_study_left_reported_with_every_delivery_done(two_destinations, settings):
    for delivery in two_destinations:
        writeback.delivery_attempt(delivery.pk)
    study = Study.objects.get()
    # As a lost state move leaves it: every delivery delivered, the study still reported.
    Study.objects.filter(pk=study.pk).update(state=StudyState.REPORTED)
    assert pipeline_sweep()["written_back_reaped"] == 0  # not before FHIRAI_STALL_SECONDS
    Study.objects.filter(pk=study.pk).update(
        state_changed_at=timezone.now() - timedelta(seconds=settings.FHIRAI_STALL_SECONDS + 1)
    )
    assert pipeline_sweep()["written_back_reaped"] == 1
    assert Study.objects.get().state == StudyState.WRITTEN_BACK


def test_the_sweep_leaves_a_study_whose_delivery_is_still_open(two_destinations, settings):
    writeback.delivery_attempt(two_destinations[0].pk)
    Study.objects.update(
        state_changed_at=timezone.now() - timedelta(seconds=settings.FHIRAI_STALL_SECONDS + 1)
    )
    assert pipeline_sweep()["written_back_reaped"] == 0
    assert Study.objects.get().state == StudyState.REPORTED
