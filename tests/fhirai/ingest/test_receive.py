from __future__ import annotations

from io import BytesIO

import pytest
from django.utils import timezone
from pydicom import dcmread

from fhirai import blobs
from fhirai.audit.models import TimelineEvent
from fhirai.errors import InvalidInput, Unavailable
from fhirai.ingest.models import Instance, Rejection, Study, StudyState
from fhirai.ingest.receive import input_reject, instance_receive
from tests.support.phantom import ct_phantom

pytestmark = pytest.mark.django_db


def test_receive_keeps_the_bytes_as_sent_and_commits_the_row(phantom, blob_dir):
    got = instance_receive(raw=phantom.files[0], calling_ae="MODALITY1")
    instance = Instance.objects.get(pk=got.instance_id)
    assert blobs.get(instance.blob_key) == phantom.files[0]
    assert (blob_dir / instance.blob_key).is_file()
    study = instance.study
    assert (
        study.state == StudyState.RECEIVING and study.instance_count == 1 and study.calling_ae == "MODALITY1"
    )
    assert study.patient_id == "MRN-7734921" and study.modalities == "CT"
    assert [e.event for e in TimelineEvent.objects.filter(item_id=study.pk)] == ["received", "acked"]


def test_duplicate_instance_is_acknowledged_without_a_second_row(phantom, blob_dir):
    first = instance_receive(raw=phantom.files[0])
    again = instance_receive(raw=phantom.files[0])
    assert again.duplicate and again.instance_id == first.instance_id
    assert Instance.objects.count() == 1 and Study.objects.get().instance_count == 1


def test_dataset_without_study_uid_is_invalid_input(phantom, blob_dir):
    ds = dcmread(BytesIO(phantom.files[0]))
    del ds.StudyInstanceUID
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(InvalidInput) as exc:
        instance_receive(raw=out.getvalue())
    assert exc.value.code == "missing-attribute" and "StudyInstanceUID" in exc.value.detail
    assert not Instance.objects.exists()


def test_rejected_input_is_kept_for_inspection(blob_dir):
    rejection = input_reject(
        protocol="dicom",
        raw=b"not dicom",
        peer="X@127.0.0.1:1",
        code="unparseable",
        detail="cannot parse the dataset",
    )
    assert Rejection.objects.get(pk=rejection.pk).code == "unparseable"
    assert blobs.get(rejection.blob_key) == b"not dicom"


def test_garbage_is_unparseable(blob_dir):
    with pytest.raises(InvalidInput) as exc:
        instance_receive(raw=b"\x00" * 50)
    assert exc.value.code == "unparseable"


def test_blob_store_failure_is_unavailable_and_nothing_is_committed(phantom, settings, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    settings.FHIRAI_BLOB_DIR = blocker / "blobs"  # a directory under a file: every write fails
    with pytest.raises(Unavailable):
        instance_receive(raw=phantom.files[0])
    assert not Study.objects.exists()


def test_new_instance_after_completion_opens_a_revision(blob_dir):
    ph = ct_phantom(slices=6, size=32)
    instance_receive(raw=ph.files[0])
    Study.objects.update(state=StudyState.REPORTED, state_changed_at=timezone.now())
    instance_receive(raw=ph.files[1])
    study = Study.objects.get()
    assert study.state == StudyState.RECEIVING and study.revision == 2 and study.instance_count == 2
    instance_receive(raw=ph.files[1])  # a resend of the late instance changes nothing more
    assert Study.objects.get().revision == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_instances_of_a_new_study_count_once_each_and_its_first_events_once(blob_dir):
    """Several associations delivering one new study at once (and resending): one study row,
    every instance counted once, the first-instance timeline events written once."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    ph = ct_phantom(slices=12, size=32)

    def receive(raw: bytes) -> bool:
        try:
            return instance_receive(raw=raw, calling_ae="MODALITY1").duplicate
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=4) as pool:
        duplicates = list(pool.map(receive, [*ph.files, *ph.files[:4]]))
    assert sum(duplicates) == 4
    study = Study.objects.get()
    assert study.instance_count == 12 == Instance.objects.count()
    events = [e.event for e in TimelineEvent.objects.filter(item_id=study.pk)]
    assert events == ["received", "acked"]


def test_a_late_instance_of_a_prior_study_is_counted_without_a_revision(blob_dir):
    files = ct_phantom(slices=3, size=32).files
    instance_receive(raw=files[0], role="prior")
    study = Study.objects.get()
    assert study.role == "prior" and study.instance_count == 1
    Study.objects.filter(pk=study.pk).update(state=StudyState.NO_MODEL)
    instance_receive(raw=files[1], role="prior")
    study.refresh_from_db()
    assert study.state == StudyState.NO_MODEL and study.revision == 1 and study.instance_count == 2
    assert not TimelineEvent.objects.filter(detail__contains="revision opened").exists()
