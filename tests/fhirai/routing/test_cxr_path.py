"""Bring-your-own image models end to end, in process: a TorchScript and an ONNX package registered
with the registry and routed by their rules (DX chest to one, CR chest to the other), each study
de-identified, its model run by the runtime on the de-identified images (preprocessing -> model
-> thresholds), and the result written as coded Observations (IHE AI Results) about the real
patient. The models are the tiny DenseNet the test support trains on generated images."""

from __future__ import annotations

from io import BytesIO

import pytest

from fhirai.ingest.models import StudyState
from fhirai.results.models import FhirResource
from fhirai.results.store import resource_read
from fhirai.routing.jobs import job_record_result
from fhirai.routing.registry import model_register
from tests.support import pipeline
from tests.support.phantom import Phantom
from tests.support.tiny_cxr import IDENTITY, TEST_SYSTEM, cxr_case, tiny_model_package
from workers.inference.runtime import run_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def packages(tmp_path, settings):
    settings.FHIRAI_MODEL_DIR = tmp_path / "models"
    src = tmp_path / "src"
    torchscript = tiny_model_package(
        src, "torchscript", accepts={"modalities": ["DX"], "body_parts": ["CHEST"]}
    )
    onnx = tiny_model_package(src, "onnx", accepts={"modalities": ["CR"], "body_parts": ["CHEST"]})
    return model_register(torchscript)[0], model_register(onnx)[0]


def _phantom(seed: int, *, modality: str, opacity: bool) -> Phantom:
    case = cxr_case(seed, opacity=opacity, line=False)
    ds = case.dataset
    ds.Modality = modality
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    identifiers = dict(IDENTITY) | {"StudyInstanceUID": ds.StudyInstanceUID}
    return Phantom(files=[out.getvalue()], lung_volume_ml=0.0, laa950_pct=0.0, identifiers=identifiers)


@pytest.mark.parametrize(("modality", "fmt", "opacity"), [("DX", "torchscript", True), ("CR", "onnx", False)])
def test_each_package_gets_the_studies_its_rules_accept_and_writes_coded_findings(
    packages, settings, blob_dir, modality, fmt, opacity
):
    phantom = _phantom(31 if opacity else 42, modality=modality, opacity=opacity)
    study = pipeline.receive(phantom)
    job = pipeline.complete_and_deidentify(study, settings)
    study.refresh_from_db()
    assert study.state == StudyState.QUEUED
    assert [j.model.name for j in study.jobs.all()] == [f"tiny-cxr-{fmt}"]  # routed by its rules only
    output = run_model(job.model.name, job.model.version, list(job.inputs))
    findings = {f["name"]: f for f in output["findings"]}
    assert findings["opacity"]["present"] is opacity and findings["line"]["present"] is False
    job_record_result(job.pk, output)
    study.refresh_from_db()
    assert study.state == StudyState.REPORTED

    report = FhirResource.objects.get(resource_type="DiagnosticReport").content
    assert report["subject"]["identifier"]["value"] == IDENTITY["PatientID"]  # re-identified
    assert report["status"] == "preliminary" and report["meta"]["tag"][0]["code"] == "AIAST"
    observations = [resource_read(*r["reference"].split("/")).content for r in report["result"]]
    by_code = {o["code"]["coding"][0]["code"]: o for o in observations}
    assert (
        set(by_code) == {"opacity", "line"}
        and by_code["opacity"]["code"]["coding"][0]["system"] == TEST_SYSTEM
    )
    value = by_code["opacity"]["valueCodeableConcept"]["coding"][0]["code"]
    assert value == ("52101004" if opacity else "2667000")  # SNOMED CT Present / Absent
    probability = by_code["opacity"]["component"][0]["valueQuantity"]
    assert probability["code"] == "1" and (probability["value"] >= 0.5) is opacity
    device = FhirResource.objects.get(resource_type="Device").content
    assert device["version"][0]["value"] == "1.0.0" and f"tiny-cxr-{fmt}" in device["identifier"][0]["value"]


def test_a_disabled_package_is_not_routed(packages, settings, blob_dir):
    torchscript, _ = packages
    torchscript.enabled = False
    torchscript.save()
    study = pipeline.receive(_phantom(33, modality="DX", opacity=True))
    pipeline.complete_and_deidentify(study, settings)
    study.refresh_from_db()
    assert study.state == StudyState.NO_MODEL and not study.jobs.exists()
