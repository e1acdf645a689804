"""Priors (issue 9): a model that asks for the patient's previous comparable study gets it. A real
Orthanc (Debian's package, started by the test) holds the patient's earlier CT chest and a more
recent CT head; fhirai's C-FIND chooses the chest study, its C-MOVE makes Orthanc send it to
fhirai's priors AE title on fhirai's real SCP socket, the prior is de-identified (same patient
pseudonym and date shift) and reaches ct-lung-change, whose report gives the interval change."""

from __future__ import annotations

import importlib
import shutil
from io import BytesIO

import pytest
from django.apps import apps
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from fhirai.deid.study import study_deidentify
from fhirai.ingest.models import Rejection, Study
from fhirai.ops.retry import study_retry
from fhirai.results.models import FhirResource
from fhirai.routing.jobs import job_record_result
from fhirai.routing.models import InferenceJob, JobState, ModelRecord, PriorFetch
from fhirai.routing.priors import Candidate, candidate_choose, prior_fetch
from integrations.dicom import status
from tests.support import pipeline
from tests.support.orthanc import ORTHANC, orthanc_find, orthanc_running
from tests.support.phantom import IDENTITY, ct_phantom

pytestmark = pytest.mark.django_db(transaction=True)
needs_orthanc = pytest.mark.skipif(not shutil.which(ORTHANC), reason="needs Debian's orthanc package")


def _change_model(*, required: bool = False) -> ModelRecord:
    """ct-lung-change as its migration registers it (transactional tests flush it), switched on."""
    pipeline.ensure_reference_model()
    importlib.import_module("fhirai.routing.migrations.0006_priors").register(apps, None)
    model = ModelRecord.objects.get(name="ct-lung-change")
    model.enabled = True
    model.manifest = {"priors": {"max_age_days": 1825, "required": required}}
    model.save()
    return model


def _dated(files: list[bytes], day: str, *, region: str = "CHEST") -> list[bytes]:
    """The same patient's study on another day (and body region)."""
    out = []
    for raw in files:
        ds = dcmread(BytesIO(raw))
        ds.StudyDate = ds.SeriesDate = day
        ds.BodyPartExamined, ds.StudyDescription = region, f"CT {region}"
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def _store(port: int, files: list[bytes], *, called: str = "ORTHANC") -> list[int]:
    scu = AE(ae_title="MODALITY")
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    codes = [int(assoc.send_c_store(dcmread(BytesIO(raw))).Status) for raw in files]
    assoc.release()
    return codes


def _fetched(files: list[bytes], settings) -> tuple[Study, InferenceJob, PriorFetch]:
    """A study received and de-identified, and the prior search of its ct-lung-change job run."""
    study = pipeline.receive_files(files)
    pipeline.complete_and_deidentify(study, settings)
    job = InferenceJob.objects.get(study=study, model__name="ct-lung-change")
    prior_fetch(job.pk)
    job.refresh_from_db()
    return study, job, PriorFetch.objects.get(job=job)


@pytest.fixture
def pacs(tmp_path, scp, settings):
    modalities = {
        "fhirai": ("FHIRAI", "127.0.0.1", scp),
        "fhirai-priors": ("FHIRAI_PRIORS", "127.0.0.1", scp),
    }
    with orthanc_running(tmp_path, modalities=modalities) as running:
        settings.FHIRAI_PRIORS_PACS = f"ORTHANC@127.0.0.1:{running['dicom']}"
        yield running


@needs_orthanc
def test_a_prior_fetched_by_c_move_from_the_pacs_reaches_the_model_that_asks_for_it(
    pacs, scp, settings, blob_dir
):
    settings.FHIRAI_FHIR_UPSTREAM_URL = ""
    model = _change_model()
    prior_phantom = ct_phantom(emphysema=0.06, seed=2)
    head = _dated(ct_phantom(seed=3).files[:6], "20251101", region="HEAD")
    assert set(_store(pacs["dicom"], _dated(prior_phantom.files, "20250310") + head)) == {status.SUCCESS}
    assert (
        len(orthanc_find(pacs["dicom"], "STUDY", PatientID=IDENTITY["PatientID"], StudyInstanceUID="")) == 2
    )

    current = ct_phantom(emphysema=0.12, seed=1)
    study = pipeline.receive(current)
    assert pipeline.complete_and_deidentify(study, settings) is not None
    job = InferenceJob.objects.get(study=study, model=model)
    assert job.state == JobState.WAITING and PriorFetch.objects.get(job=job).state == "searching"

    prior_fetch(job.pk)  # the default worker's task: C-FIND, choose, C-MOVE into fhirai's SCP
    fetch = PriorFetch.objects.get(job=job)
    assert fetch.state == "received" and fetch.source == "pacs" and fetch.moved == len(prior_phantom.files)
    prior = Study.objects.get(role="prior")
    assert prior.study_uid == prior_phantom.identifiers["StudyInstanceUID"]  # the chest study, not the head
    assert prior.study_date == "20250310" and prior.instance_count == len(prior_phantom.files)
    assert prior.state == "complete"

    study_deidentify(prior.pk)  # the prior's de-identification task: it is then no model's study
    prior.refresh_from_db()
    assert prior.state == "no_model" and not prior.jobs.exists()
    job.refresh_from_db()
    fetch.refresh_from_db()
    assert fetch.state == "ready" and job.state == JobState.QUEUED
    assert fetch.interval_days == 370  # 2025-03-10 to 2026-03-15, from the identified dates
    assert len(job.prior_inputs) == len(prior_phantom.files)
    assert all(key.startswith("deid/") for key in job.prior_inputs)

    from workers.inference.runtime import run_model

    output = run_model(
        model.name,
        model.version,
        list(job.inputs),
        prior_keys=list(job.prior_inputs),
        prior_days=fetch.interval_days,
    )
    values = {m["name"]: m["value"] for m in output["measurements"]}
    assert values["prior_interval"] == 370
    assert values["laa950_change"] == pytest.approx(current.laa950_pct - prior_phantom.laa950_pct, abs=1.0)
    assert values["laa950_change"] > 4
    assert values["lung_volume_prior"] == pytest.approx(prior_phantom.lung_volume_ml, rel=0.05)
    job_record_result(job.pk, output)
    other = InferenceJob.objects.get(study=study, model__name="ct-lung-quant")  # no prior asked: ran at once
    assert other.prior_inputs == [] and not PriorFetch.objects.filter(job=other).exists()
    job_record_result(other.pk, pipeline.infer(other))
    study.refresh_from_db()
    assert study.state == "reported"
    observations = {
        r.content["code"]["coding"][0]["code"]
        for r in FhirResource.objects.filter(resource_type="Observation")
    }
    assert {"lung-volume-change", "laa-950-change", "prior-interval"} <= observations
    reports = {
        r.content["code"]["text"]: r.content
        for r in FhirResource.objects.filter(resource_type="DiagnosticReport")
    }
    assert len(reports) == 2  # one per model that read the study
    change = reports["CT lung quantification with interval change (AI)"]
    assert "since the prior study 370 days earlier" in change["conclusion"]


@needs_orthanc
def test_the_priors_ae_title_takes_only_a_study_a_fetch_is_moving(pacs, scp, blob_dir):
    codes = _store(scp, ct_phantom().files[:2], called="FHIRAI_PRIORS")
    assert codes == [status.NOT_AUTHORIZED] * 2
    assert not Study.objects.exists()
    assert Rejection.objects.filter(code="not-requested").count() == 2


@needs_orthanc
@pytest.mark.parametrize("scp", ["fhirai", "pynetdicom"], indirect=True)
def test_a_prior_arrives_with_the_called_ae_checked_and_the_pacs_pinned_to_its_address(
    pacs, scp, settings, blob_dir
):
    """The strict association policy a security review asks for still lets a prior in: Orthanc's
    C-STORE sub-operations call FHIRAI_PRIORS (one of fhirai's titles while priors are configured)
    as ORTHANC from the address it is pinned to."""
    from fhirai.ingest.sources import sources_changed

    settings.FHIRAI_DICOM_CHECK_CALLED_AE = True
    settings.FHIRAI_DICOM_ALLOW = ["ORTHANC@127.0.0.1"]
    sources_changed()
    settings.FHIRAI_FHIR_UPSTREAM_URL = ""
    _change_model()
    prior_phantom = ct_phantom(emphysema=0.06, seed=2)
    assert set(_store(pacs["dicom"], _dated(prior_phantom.files[:4], "20250310"))) == {status.SUCCESS}
    study, job, fetch = _fetched(ct_phantom(emphysema=0.12, seed=1).files, settings)
    assert fetch.state == "received" and fetch.moved == 4
    assert not Rejection.objects.exists()


@needs_orthanc
def test_a_patient_without_an_earlier_study_runs_without_one_and_says_so(pacs, settings, blob_dir):
    settings.FHIRAI_FHIR_UPSTREAM_URL = ""
    _change_model()
    study, job, fetch = _fetched(ct_phantom().files, settings)
    assert fetch.state == "none" and "no comparable earlier study" in fetch.detail
    assert job.state == JobState.QUEUED and job.prior_inputs == []
    output = pipeline.infer(job)
    assert "No prior study to compare with." in output["conclusion"]


def test_a_prior_fhirai_already_holds_is_used_without_asking_a_pacs(settings, blob_dir):
    settings.FHIRAI_PRIORS_PACS = ""
    settings.FHIRAI_FHIR_UPSTREAM_URL = ""
    _change_model()
    earlier = pipeline.receive_files(_dated(ct_phantom(emphysema=0.06, seed=2).files, "20251215"))
    pipeline.complete_and_deidentify(earlier, settings)  # de-identified (its own job waits: no prior)
    study, job, fetch = _fetched(ct_phantom().files, settings)
    assert fetch.state == "ready" and fetch.source == "fhirai" and fetch.prior_study_id == earlier.pk
    assert job.state == JobState.QUEUED and len(job.prior_inputs) == 24
    assert fetch.interval_days == 90
    output = pipeline.infer(job)
    assert {m["name"]: m["value"] for m in output["measurements"]}["prior_interval"] == 90


def test_a_model_that_requires_a_prior_fails_visibly_without_one(settings, blob_dir):
    settings.FHIRAI_PRIORS_PACS = ""
    _change_model(required=True)
    study, job, _fetch = _fetched(ct_phantom().files, settings)
    study.refresh_from_db()
    assert job.state == JobState.FAILED and "no prior study" in job.error
    assert study.state == "failed" and "requires a prior study" in study.error
    assert PriorFetch.objects.get(job=job).state == "failed"

    # The operator fixes the cause (a prior arrives) and presses Retry: the search starts again.
    earlier = pipeline.receive_files(_dated(ct_phantom(seed=2).files, "20251215"))
    pipeline.complete_and_deidentify(earlier, settings)
    study_retry(study.pk, actor="operator")
    job.refresh_from_db()
    fetch = PriorFetch.objects.get(job=job)
    assert job.state == JobState.WAITING and fetch.state == "searching" and fetch.detail == ""
    prior_fetch(job.pk)
    fetch.refresh_from_db()
    job.refresh_from_db()
    assert fetch.state == "ready" and fetch.prior_study_id == earlier.pk and job.state == JobState.QUEUED


def test_the_most_recent_comparable_study_in_the_window_is_chosen(settings, blob_dir):
    model = _change_model()
    study = Study(study_uid="1.2.3", study_date="20260315", modalities="CT", body_part="CHEST")
    found = [
        Candidate("1.2.3", "20260301", ("CT",), "CT CHEST", ("CHEST",)),  # the study itself
        Candidate("1.2.4", "20260316", ("CT",), "CT CHEST", ("CHEST",)),  # after it
        Candidate("1.2.5", "20251101", ("CT",), "CT HEAD", ("HEAD",)),  # another region
        Candidate("1.2.6", "20251001", ("MR",), "MR CHEST", ("CHEST",)),  # another modality
        Candidate("1.2.7", "20240101", ("CT",), "CT THORAX", ()),  # comparable, by description
        Candidate("1.2.8", "20250601", ("CT",), "", ("CHEST",)),  # comparable, the most recent
        Candidate("1.2.9", "20190101", ("CT",), "CT CHEST", ("CHEST",)),  # too old
    ]
    chosen = candidate_choose(found, study=study, model=model, earliest="20210315", latest="20260314")
    assert chosen is not None and chosen.study_uid == "1.2.8"
    assert (
        candidate_choose(found[:6], study=study, model=model, earliest="20250701", latest="20260314") is None
    )
