"""Study assembly a site can trust: a model reads its series; localizers, scouts, dose screens and
non-image objects are left out and named on the timeline (not failed); series fit the model's
image type, plane and size; daily QA and phantom studies stay away from clinical models."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from fhirai.audit.models import TimelineEvent
from fhirai.ingest.models import Instance, Study
from fhirai.ingest.receive import instance_receive
from fhirai.routing.manifest import ManifestError, accepts_clean
from fhirai.routing.models import InferenceJob, ModelRecord
from fhirai.routing.rules import series_select
from tests.support import pipeline

pytestmark = pytest.mark.django_db


def _variant(raw: bytes, *, series: str, **changes: object) -> bytes:
    ds = dcmread(BytesIO(raw))
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_localizers_and_dose_screens_are_left_out_and_named(phantom, settings, blob_dir):
    study = pipeline.receive(phantom)
    scout = generate_uid()
    for _ in range(2):
        instance_receive(
            raw=_variant(phantom.files[0], series=scout, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
        )
    dose = generate_uid()
    instance_receive(raw=_variant(phantom.files[1], series=dose, SeriesDescription="Dose Report"))
    assert set(Instance.objects.values_list("plane", flat=True)) == {"axial"}
    job = pipeline.complete_and_deidentify(study, settings)
    assert job is not None and len(job.inputs) == len(phantom.files)
    main = (
        Instance.objects.filter(deid_blob_key__in=job.inputs).values_list("series_uid", flat=True).distinct()
    )
    assert list(main) == [phantom.identifiers["SeriesInstanceUID"]]
    skipped = TimelineEvent.objects.filter(item_id=study.pk, event="skipped").values_list("detail", flat=True)
    [note] = [d for d in skipped if "left out" in d]
    assert f"{scout[-12:]} (localizer)" in note and f"{dose[-12:]} (dose report)" in note
    assert Study.objects.get(pk=study.pk).state == "queued"  # left out, not failed


def test_a_model_reads_only_series_that_fit_its_image_type_plane_and_size(phantom, settings, blob_dir):
    study = pipeline.receive(phantom)
    pipeline.complete_and_deidentify(study, settings)
    model = ModelRecord.objects.get(name="ct-lung-quant")
    model.accepts = {**model.accepts, "planes": ["coronal"]}
    assert series_select(model, study).inputs == []
    model.accepts = {**model.accepts, "planes": ["axial"], "min_instances": len(phantom.files) + 1}
    selection = series_select(model, study)
    assert selection.inputs == [] and "fewer than" in next(iter(selection.dropped.values()))
    model.accepts = {**model.accepts, "min_instances": 1, "image_types": ["AXIAL"]}
    assert len(series_select(model, study).inputs) == len(phantom.files)


def test_a_daily_qa_phantom_study_is_kept_from_clinical_models(phantom, settings, blob_dir):
    study = pipeline.receive(phantom)
    Study.objects.filter(pk=study.pk).update(patient_name="PHANTOM^DAILY QA")
    assert pipeline.complete_and_deidentify(study, settings) is None
    study.refresh_from_db()
    assert study.state == "no_model"
    assert TimelineEvent.objects.filter(item_id=study.pk, detail__startswith="daily QA / phantom").exists()
    assert not InferenceJob.objects.exists()


def test_routing_keys_are_checked():
    assert accepts_clean("quantification", {"planes": ["Axial"], "min_instances": 20, "qa": False}) == {
        "planes": ["axial"],
        "min_instances": 20,
        "qa": False,
    }
    for bad in ({"planes": ["diagonal"]}, {"min_instances": 0}, {"qa": "yes"}):
        with pytest.raises(ManifestError):
            accepts_clean("quantification", bad)


def test_a_test_patient_called_phantom_is_still_clinical(settings):
    from fhirai.routing.rules import study_is_qa

    assert not study_is_qa(
        Study(patient_name="Phantom^Lung", patient_id="PHANTOM-0001", study_description="CT CHEST")
    )
    assert study_is_qa(Study(patient_name="QA^CT1", patient_id="QA", study_description="CT"))
    assert study_is_qa(Study(patient_name="X", patient_id="1", study_description="Daily QC water phantom"))
