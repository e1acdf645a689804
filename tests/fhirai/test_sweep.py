"""The sweep re-dispatches work whose message was lost; nothing acknowledged stays stuck."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fhirai.audit.models import TimelineEvent
from fhirai.ingest.models import Study, StudyState
from fhirai.routing.models import InferenceJob, JobState
from fhirai.sweep import pipeline_recover, pipeline_sweep
from tests.support import pipeline

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    """Records what the sweep hands to the broker (the broker itself is exercised in tests/e2e)."""
    calls: list[tuple] = []
    monkeypatch.setattr("fhirai.celery.dispatch", lambda name, *args: calls.append((name, *args)))
    return calls


def test_quiet_study_is_completed_and_its_deidentification_queued(
    phantom, settings, blob_dir, sent, django_capture_on_commit_callbacks
):
    study = pipeline.receive(phantom)
    settings.FHIRAI_STUDY_QUIET_SECONDS = 3600
    assert pipeline_sweep()["completed"] == 0
    settings.FHIRAI_STUDY_QUIET_SECONDS = 0
    with django_capture_on_commit_callbacks(execute=True):
        assert pipeline_sweep()["completed"] == 1
    assert Study.objects.get().state == StudyState.COMPLETE
    assert sent == [("workers.tasks.study_deidentify", study.pk)]


def test_lost_deidentification_is_dispatched_again_after_the_stall_timeout(
    phantom, settings, blob_dir, sent, django_capture_on_commit_callbacks
):
    pipeline.receive(phantom)
    Study.objects.update(state=StudyState.COMPLETE, state_changed_at=timezone.now() - timedelta(seconds=600))
    settings.FHIRAI_STALL_SECONDS = 120
    with django_capture_on_commit_callbacks(execute=True):
        assert pipeline_sweep()["deid_redispatched"] == 1
        assert pipeline_sweep()["deid_redispatched"] == 0  # touched: not again until it stalls again
    assert [c[0] for c in sent] == ["workers.tasks.study_deidentify"]
    assert TimelineEvent.objects.filter(event="retried").count() == 1


def test_lost_inference_is_retried_then_fails_visibly(
    phantom, settings, blob_dir, sent, django_capture_on_commit_callbacks
):
    study = pipeline.receive(phantom)
    job = pipeline.complete_and_deidentify(study, settings)
    settings.FHIRAI_INFERENCE_TIMEOUT = 60
    for attempt in (2, 3):
        InferenceJob.objects.update(dispatched_at=timezone.now() - timedelta(seconds=120))
        with django_capture_on_commit_callbacks(execute=True):
            assert pipeline_sweep()["jobs_redispatched"] == 1
        assert InferenceJob.objects.get().attempts == attempt
    assert [c[0] for c in sent] == ["workers.tasks.study_infer"] * 2
    InferenceJob.objects.update(dispatched_at=timezone.now() - timedelta(seconds=120))
    pipeline_sweep()
    job.refresh_from_db()
    assert job.state == JobState.FAILED and "3 attempts" in job.error
    study.refresh_from_db()
    assert study.state == StudyState.FAILED and "3 attempts" in study.error


def test_start_up_recovery_redispatches_in_flight_inference_at_once(
    phantom, settings, blob_dir, sent, django_capture_on_commit_callbacks
):
    study = pipeline.receive(phantom)
    job = pipeline.complete_and_deidentify(study, settings)
    with django_capture_on_commit_callbacks(execute=True):
        assert pipeline_recover()["jobs_redispatched"] == 1
    assert sent[-1][:2] == ("workers.tasks.study_infer", job.pk)
    assert all(key.startswith("deid/") for key in sent[-1][4])
