"""Retry of failed studies and deliveries through the API, on a real pipeline run (CT phantom)."""

from __future__ import annotations

import pytest

from fhirai.api.models import AccessEvent
from fhirai.audit.models import TimelineEvent
from fhirai.deid.study import study_deidentify
from fhirai.ingest.models import Study, StudyState
from fhirai.ingest.state import study_fail
from fhirai.results.models import Delivery, DeliveryState
from fhirai.results.writeback import delivery_attempt
from fhirai.routing.jobs import job_fail, job_record_result
from fhirai.routing.models import InferenceJob, JobState
from tests.support import pipeline
from tests.support.fhir_upstream import FhirUpstream

pytestmark = pytest.mark.django_db


@pytest.fixture
def upstream(settings):
    with FhirUpstream() as up:
        settings.FHIRAI_FHIR_UPSTREAM_URL = up.url
        yield up


def test_failed_inference_is_retried_from_the_model_run(phantom, settings, blob_dir, as_role):
    study = pipeline.receive(phantom)
    job = pipeline.complete_and_deidentify(study, settings)
    job_fail(job.pk, "model crashed")
    assert Study.objects.get(pk=study.pk).state == StudyState.FAILED
    response = as_role("operator").post(f"/api/studies/{study.pk}/retry")
    assert response.status_code == 200 and response.json()["kind"] == "inference"
    job.refresh_from_db()
    assert (job.state, job.attempts, job.error) == (JobState.QUEUED, 1, "")
    assert Study.objects.get(pk=study.pk).state == StudyState.QUEUED
    retried = TimelineEvent.objects.filter(item_id=study.pk, event="retried").last()
    assert "token:operator-client" in retried.detail
    again = as_role("operator").post(f"/api/studies/{study.pk}/retry")
    assert again.status_code == 409 and "not failed" in again.json()["detail"]
    job_record_result(job.pk, pipeline.infer(job))
    assert Study.objects.get(pk=study.pk).state == StudyState.REPORTED
    assert InferenceJob.objects.filter(study=study).count() == 1
    assert AccessEvent.objects.filter(action="study.retry", item_ids=[study.pk]).exists()


def test_failed_deidentification_is_retried_from_de_identification(phantom, settings, blob_dir, as_role):
    study = pipeline.receive(phantom)
    pipeline.ensure_reference_model()
    settings.FHIRAI_STUDY_QUIET_SECONDS = 0
    from fhirai.assembly.complete import study_mark_complete

    assert study_mark_complete(study.pk, revision=study.revision)
    study_fail(study.pk, error="instance 1 could not be de-identified: ValueError")
    response = as_role("admin").post(f"/api/studies/{study.pk}/retry")
    assert response.json()["kind"] == "de-identification"
    assert Study.objects.get(pk=study.pk).state == StudyState.COMPLETE
    study_deidentify(study.pk)  # what the dispatched task runs
    assert Study.objects.get(pk=study.pk).state == StudyState.QUEUED


def test_failed_delivery_is_sent_again_and_completes_the_study(
    phantom, settings, blob_dir, upstream, as_role
):
    pipeline.run_all(phantom, settings)
    delivery = Delivery.objects.get()
    upstream.state.fail_with = 422
    delivery_attempt(delivery.pk)
    study = Study.objects.get()
    assert study.state == StudyState.FAILED
    api = as_role("operator")
    failed = as_role("viewer").get("/api/deliveries", state="failed").json()
    assert [d["id"] for d in failed["items"]] == [delivery.pk]
    assert failed["items"][0]["last_response_summary"].startswith("HTTP 422")
    detail = as_role("viewer").get(f"/api/studies/{study.pk}").json()
    assert detail["deliveries"][0]["state"] == "failed" and detail["reports"] and detail["jobs"]
    upstream.state.fail_with = None  # the operator fixed the destination
    response = api.post(f"/api/deliveries/{delivery.pk}/retry")
    assert response.status_code == 200
    assert Study.objects.get().state == StudyState.REPORTED
    assert api.post(f"/api/deliveries/{delivery.pk}/retry").status_code == 409
    delivery_attempt(delivery.pk)  # what the dispatched task runs
    assert Delivery.objects.get().state == DeliveryState.DELIVERED
    assert Study.objects.get().state == StudyState.WRITTEN_BACK


def test_study_retry_after_a_refused_delivery_restarts_write_back(
    phantom, settings, blob_dir, upstream, as_role
):
    pipeline.run_all(phantom, settings)
    upstream.state.fail_with = 422
    delivery_attempt(Delivery.objects.get().pk)
    study = Study.objects.get()
    upstream.state.fail_with = None
    response = as_role("operator").post(f"/api/studies/{study.pk}/retry")
    assert response.json()["kind"] == "write-back"
    delivery_attempt(Delivery.objects.get().pk)
    assert Study.objects.get().state == StudyState.WRITTEN_BACK
