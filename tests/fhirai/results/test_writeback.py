from __future__ import annotations

import pytest
from django.utils import timezone

from fhirai.audit.models import TimelineEvent
from fhirai.ingest.models import Study, StudyState
from fhirai.results.models import Delivery, DeliveryState
from fhirai.results.store import resource_put
from fhirai.results.writeback import deliveries_create, delivery_attempt, report_bundle
from tests.support import pipeline
from tests.support.fhir_upstream import FhirUpstream

pytestmark = pytest.mark.django_db


@pytest.fixture
def upstream(settings):
    with FhirUpstream() as up:
        settings.FHIRAI_FHIR_UPSTREAM_URL = up.url
        settings.FHIRAI_FHIR_UPSTREAM_TOKEN = "s3cret"
        yield up


def _reported(phantom, settings) -> Delivery:
    pipeline.run_all(phantom, settings)
    return Delivery.objects.get()


def test_report_is_written_upstream_as_one_transaction_with_resolved_references(
    phantom, settings, blob_dir, upstream
):
    delivery = _reported(phantom, settings)
    delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.DELIVERED and delivery.last_status == 200
    assert Study.objects.get().state == StudyState.WRITTEN_BACK
    state = upstream.state
    assert state.auth_headers == ["Bearer s3cret"]
    [report] = state.all("DiagnosticReport")
    observations = {f"Observation/{o['id']}" for o in state.all("Observation")}
    assert {r["reference"] for r in report["result"]} == observations and len(observations) == 2
    [device] = state.all("Device")
    assert all(o["device"]["reference"] == f"Device/{device['id']}" for o in state.all("Observation"))
    [provenance] = state.all("Provenance")
    assert provenance["target"][0]["reference"] == f"DiagnosticReport/{report['id']}"
    assert report["subject"]["identifier"]["value"] == "MRN-7734921"
    assert "reference" not in report["imagingStudy"][0]  # the upstream's own ImagingStudy: by identifier


def test_sending_the_same_report_again_creates_nothing_new_upstream(phantom, settings, blob_dir, upstream):
    delivery = _reported(phantom, settings)
    delivery_attempt(delivery.pk)
    Delivery.objects.filter(pk=delivery.pk).update(state=DeliveryState.PENDING)  # e.g. the response was lost
    delivery_attempt(delivery.pk)
    state = upstream.state
    assert state.requests == 2
    assert [len(state.all(t)) for t in ("DiagnosticReport", "Observation", "Device", "Provenance")] == [
        1,
        2,
        1,
        1,
    ]


def test_upstream_down_is_retried_with_backoff_until_it_answers(phantom, settings, blob_dir, upstream):
    delivery = _reported(phantom, settings)
    upstream.state.fail_with = 503
    delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.PENDING and delivery.attempts == 1
    assert delivery.next_attempt_at > timezone.now()
    assert TimelineEvent.objects.filter(event="retried").exists()
    delivery_attempt(delivery.pk)  # not due yet: nothing sent
    assert upstream.state.requests == 1
    upstream.state.fail_with = None
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.DELIVERED and delivery.attempts == 2
    assert len(upstream.state.all("DiagnosticReport")) == 1


def test_upstream_refusal_is_a_visible_failure(phantom, settings, blob_dir, upstream):
    delivery = _reported(phantom, settings)
    upstream.state.fail_with = 422
    delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.FAILED and delivery.last_status == 422
    assert "told to fail" in delivery.last_response
    study = Study.objects.get()
    assert study.state == StudyState.FAILED and "HTTP 422" in study.error


def test_bundle_uses_conditional_updates_and_creates(phantom, settings, blob_dir, upstream):
    delivery = _reported(phantom, settings)
    bundle = report_bundle(delivery.report)
    assert bundle["type"] == "transaction"
    requests = [e["request"] for e in bundle["entry"]]
    updates = [r for r in requests if r["method"] == "PUT"]
    assert {r["url"].split("?")[0] for r in updates} == {"Device", "Observation", "DiagnosticReport"}
    assert all("?identifier=" in r["url"] for r in updates)
    [create] = [r for r in requests if r["method"] == "POST"]
    assert create["url"] == "Provenance" and create["ifNoneExist"].startswith("_tag=")
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])


def test_an_amended_report_updates_the_upstream_copy(phantom, settings, blob_dir, upstream):
    delivery = _reported(phantom, settings)
    delivery_attempt(delivery.pk)
    report = delivery.report
    amended = resource_put({**report.content, "status": "amended", "conclusion": "Amended."})
    assert amended.version_id == 2
    assert deliveries_create(amended, Study.objects.get()) == 1
    second = Delivery.objects.get(report_version=2)
    delivery_attempt(second.pk)
    second.refresh_from_db()
    assert second.state == DeliveryState.DELIVERED
    [upstream_report] = upstream.state.all("DiagnosticReport")
    assert upstream_report["status"] == "amended" and upstream_report["conclusion"] == "Amended."
    assert upstream_report["meta"]["versionId"] == "2"
    assert len(upstream.state.all("Observation")) == 2 and len(upstream.state.all("Device")) == 1


def test_refusal_shows_on_the_studys_timeline_with_the_outcome_location(
    phantom, settings, blob_dir, upstream
):
    delivery = _reported(phantom, settings)
    upstream.state.fail_with = 422
    delivery_attempt(delivery.pk)
    failed = TimelineEvent.objects.filter(item_kind="study", event="failed").last()
    assert failed is not None and "HTTP 422: invalid" in failed.error
