"""Drives the domain pipeline in-process, stage by stage, as the workers would."""

from __future__ import annotations

import importlib
from typing import Any

from django.apps import apps

from fhirai.assembly.complete import study_mark_complete
from fhirai.deid.study import study_deidentify
from fhirai.ingest.models import Study
from fhirai.ingest.receive import instance_receive
from fhirai.routing.jobs import job_record_result
from fhirai.routing.models import InferenceJob
from tests.support.phantom import Phantom


def receive(phantom: Phantom, *, calling_ae: str = "TESTSCU") -> Study:
    return receive_files(phantom.files, calling_ae=calling_ae)


def receive_files(files: list[bytes], *, calling_ae: str = "TESTSCU") -> Study:
    results = [instance_receive(raw=raw, calling_ae=calling_ae) for raw in files]
    return Study.objects.get(pk=results[0].study_id)


def ensure_reference_model() -> None:
    """The ct-lung-quant record the data migration registers: transactional tests flush tables
    between tests (migration data included), so put it back the way the migration does."""
    importlib.import_module("fhirai.routing.migrations.0002_ct_lung_quant").register(apps, None)
    importlib.import_module("fhirai.routing.migrations.0003_model_packages").measurements_nested(apps, None)


def complete_and_deidentify(study: Study, settings: Any) -> InferenceJob | None:
    ensure_reference_model()
    settings.FHIRAI_STUDY_QUIET_SECONDS = 0
    study.refresh_from_db()
    assert study_mark_complete(study.pk, revision=study.revision)
    study_deidentify(study.pk)
    return InferenceJob.objects.filter(study=study).order_by("-id").first()


def infer(job: InferenceJob) -> dict[str, Any]:
    from workers.inference.runtime import run_model

    fetch = getattr(job, "prior_fetch", None)
    return run_model(
        job.model.name,
        job.model.version,
        list(job.inputs),
        prior_keys=list(job.prior_inputs),
        prior_days=fetch.interval_days if fetch is not None else None,
    )


def run_all(phantom: Phantom, settings: Any) -> Study:
    study = receive(phantom)
    job = complete_and_deidentify(study, settings)
    assert job is not None
    job_record_result(job.pk, infer(job))
    study.refresh_from_db()
    return study
