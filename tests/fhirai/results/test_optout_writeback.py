"""An opt-out that arrives after a study was routed (while its model ran, or while a destination
was down) still keeps the result from leaving: every delivery is asked before each attempt and
ends `withheld`, the timeline says why, webhooks carry no report, and the study ends no_model
(or written_back when a destination had it before the objection)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fhirai.audit.models import TimelineEvent
from fhirai.context.consent import optout_set
from fhirai.ingest.models import Study, StudyState
from fhirai.results import writeback
from fhirai.results.models import Delivery, DeliveryState
from fhirai.routing.jobs import job_record_result
from fhirai.sweep import pipeline_sweep
from fhirai.webhooks.models import WebhookDelivery, WebhookSubscription
from tests.support import pipeline
from tests.support.fhir_upstream import FhirUpstream
from tests.support.mllp_peer import MllpPeer

pytestmark = pytest.mark.django_db


@pytest.fixture
def destinations(settings, blob_dir):
    with FhirUpstream() as up, MllpPeer() as peer:
        settings.FHIRAI_FHIR_UPSTREAM_URL = up.url
        settings.FHIRAI_HL7_PEERS = {"EHR": ("127.0.0.1", peer.port)}
        settings.FHIRAI_HL7_TIMEOUT = 5
        yield up, peer


def _reported(phantom, settings, *, opt_out_before_result: bool = False) -> Study:
    study = pipeline.receive(phantom)
    job = pipeline.complete_and_deidentify(study, settings)
    assert job is not None  # routed: no opt-out yet
    if opt_out_before_result:
        optout_set(study.patient_id, source="site", active=True)
    job_record_result(job.pk, pipeline.infer(job))
    study.refresh_from_db()
    assert study.state == StudyState.REPORTED
    return study


def _skipped(study: Study) -> list[str]:
    return list(
        TimelineEvent.objects.filter(item_kind="study", item_id=study.pk, event="skipped").values_list(
            "detail", flat=True
        )
    )


def test_an_opt_out_after_the_report_withholds_every_delivery(destinations, phantom, settings):
    up, peer = destinations
    study = _reported(phantom, settings)
    optout_set(study.patient_id, source="site", active=True)
    for delivery in Delivery.objects.all():
        writeback.delivery_attempt(delivery.pk)
    assert set(Delivery.objects.values_list("state", flat=True)) == {DeliveryState.WITHHELD}
    assert up.state.writes == 0 and not peer.messages
    study.refresh_from_db()
    assert study.state == StudyState.NO_MODEL
    details = _skipped(study)
    assert len(details) == 2 and all(d.startswith("skipped: opt-out (the site's list)") for d in details)
    assert any("not written to fhir-upstream" in d for d in details)
    # A withheld delivery is final: the sweep neither retries it nor moves the study again.
    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    assert writeback.deliveries_due() == []
    pipeline_sweep()
    assert Study.objects.get(pk=study.pk).state == StudyState.NO_MODEL


def test_a_destination_that_had_the_report_before_the_opt_out_keeps_the_study_written_back(
    destinations, phantom, settings
):
    up, peer = destinations
    study = _reported(phantom, settings)
    first, second = Delivery.objects.order_by("destination")
    writeback.delivery_attempt(first.pk)
    optout_set(study.patient_id, source="hl7", active=True)
    writeback.delivery_attempt(second.pk)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.state, second.state) == (DeliveryState.DELIVERED, DeliveryState.WITHHELD)
    study.refresh_from_db()
    assert study.state == StudyState.WRITTEN_BACK
    assert _skipped(study)[0].startswith("skipped: opt-out (HL7 PD1-12)")


def test_a_delivery_waiting_for_a_destination_that_was_down_is_withheld_at_its_retry(
    destinations, phantom, settings
):
    up, peer = destinations
    up.state.fail_with = 503
    study = _reported(phantom, settings)
    upstream = Delivery.objects.get(destination="fhir-upstream")
    writeback.delivery_attempt(upstream.pk)
    upstream.refresh_from_db()
    assert upstream.state == DeliveryState.PENDING and upstream.attempts == 1
    optout_set(study.patient_id, source="fhir", active=True)
    up.state.fail_with = None
    Delivery.objects.filter(pk=upstream.pk).update(next_attempt_at=timezone.now())
    writeback.delivery_attempt(upstream.pk)
    upstream.refresh_from_db()
    assert upstream.state == DeliveryState.WITHHELD and upstream.attempts == 1
    assert up.state.writes == 0


def test_no_report_webhook_for_a_patient_who_opted_out_while_the_model_ran(destinations, phantom, settings):
    WebhookSubscription.objects.create(
        name="engine", url="http://127.0.0.1:9/hook", events=["report.created"]
    )
    study = _reported(phantom, settings, opt_out_before_result=True)
    assert not WebhookDelivery.objects.exists()
    for delivery in Delivery.objects.all():
        writeback.delivery_attempt(delivery.pk)
    assert set(Delivery.objects.values_list("state", flat=True)) == {DeliveryState.WITHHELD}
    assert Study.objects.get(pk=study.pk).state == StudyState.NO_MODEL


def test_the_sweep_settles_a_study_whose_deliveries_were_all_withheld(destinations, phantom, settings):
    study = _reported(phantom, settings)
    # As a crash between the withholding and the state move leaves it.
    Delivery.objects.update(state=DeliveryState.WITHHELD)
    Study.objects.filter(pk=study.pk).update(
        state_changed_at=timezone.now() - timedelta(seconds=settings.FHIRAI_STALL_SECONDS + 1)
    )
    assert pipeline_sweep()["written_back_reaped"] == 1
    assert Study.objects.get(pk=study.pk).state == StudyState.NO_MODEL
