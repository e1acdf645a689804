"""The events as the pipeline raises them, on the phantom study: what each payload carries and,
above all, what it does not (no name, MRN, accession or birth date unless allowed)."""

from __future__ import annotations

import json

import pytest

from fhirai.ingest.models import StudyState
from fhirai.ingest.state import study_fail
from fhirai.results.models import Delivery
from fhirai.results.writeback import delivery_attempt
from fhirai.webhooks.models import WebhookDelivery, WebhookSubscription
from tests.support import pipeline
from tests.support.fhir_upstream import FhirUpstream
from tests.support.phantom import IDENTITY

pytestmark = pytest.mark.django_db
ALL = ["report.created", "item.failed", "item.completed", "delivery.failed"]
PHI = [
    IDENTITY["PatientName"].split("^")[0],
    IDENTITY["PatientID"],
    IDENTITY["AccessionNumber"],
    IDENTITY["PatientBirthDate"],
]


@pytest.fixture
def upstream(settings):
    with FhirUpstream() as up:
        settings.FHIRAI_FHIR_UPSTREAM_URL = up.url
        yield up


@pytest.fixture
def subscriptions():
    plain = WebhookSubscription.objects.create(name="engine", url="http://127.0.0.1:9/hook", events=ALL)
    phi = WebhookSubscription.objects.create(
        name="trusted", url="http://127.0.0.1:9/hook", events=ALL, include_phi=True
    )
    return plain, phi


def _payloads(sub: WebhookSubscription) -> dict[str, dict]:
    return {d.event_type: d.payload for d in WebhookDelivery.objects.filter(subscription=sub)}


def test_report_and_completion_events_carry_ids_and_pseudonyms_but_no_phi(
    phantom, settings, blob_dir, upstream, subscriptions
):
    plain, trusted = subscriptions
    study = pipeline.run_all(phantom, settings)
    delivery_attempt(Delivery.objects.get().pk)
    study.refresh_from_db()
    assert study.state == StudyState.WRITTEN_BACK
    payloads = _payloads(plain)
    assert set(payloads) == {"report.created", "item.completed"}
    text = json.dumps(payloads)
    assert not [value for value in PHI if value in text]
    report = payloads["report.created"]["data"]
    assert report["report"].startswith("DiagnosticReport/") and report["report_version"] == 1
    assert report["model"]["name"] == "ct-lung-quant" and report["study_id"] == study.pk
    assert report["status"] == "preliminary" and report["patient_pseudonym"].startswith("P")
    completed = payloads["item.completed"]["data"]
    assert completed["item"] == {"type": "study", "id": study.pk} and completed["state"] == "written_back"
    assert completed["reports"] == [report["report"]]
    trusted_text = json.dumps(_payloads(trusted))
    assert IDENTITY["PatientID"] in trusted_text and IDENTITY["AccessionNumber"] in trusted_text


def test_a_refused_write_back_raises_delivery_failed_and_item_failed(
    phantom, settings, blob_dir, upstream, subscriptions
):
    plain, _ = subscriptions
    study = pipeline.run_all(phantom, settings)
    upstream.state.fail_with = 422
    delivery_attempt(Delivery.objects.get().pk)
    payloads = _payloads(plain)
    assert {"delivery.failed", "item.failed"} <= set(payloads)
    failed = payloads["delivery.failed"]["data"]
    assert failed["destination"] == "fhir-upstream" and failed["last_status"] == 422
    assert "HTTP 422" in failed["error"]
    item = payloads["item.failed"]["data"]
    assert item["item"]["id"] == study.pk and item["state"] == "failed" and "HTTP 422" in item["error"]
    assert not [value for value in PHI if value in json.dumps(payloads)]


def test_a_failed_study_is_announced_once(phantom, settings, blob_dir, subscriptions):
    plain, _ = subscriptions
    study = pipeline.receive(phantom)
    assert study_fail(study.pk, error="no model accepts this study", from_states=[StudyState.RECEIVING])
    assert not study_fail(study.pk, error="again")  # already failed: no second event
    [delivery] = WebhookDelivery.objects.filter(subscription=plain)
    assert delivery.event_type == "item.failed"
    assert delivery.payload["data"]["error"] == "no model accepts this study"
