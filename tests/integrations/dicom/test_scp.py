"""The SCP on a real socket, on both engines, driven by a pynetdicom SCU (and by dcmtk in tests/e2e and
test_acceptor)."""

from __future__ import annotations

import time
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from fhirai.ingest.models import Instance, Rejection, Study
from fhirai.ingest.sources import sources_changed
from integrations.dicom import status
from integrations.dicom.scp import application_entity, server_start
from tests.support.product import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["fhirai", "pynetdicom"])
def scp(request, settings):
    """The SCP on each engine (FHIRAI_DICOM_ENGINE): both must behave the same."""
    settings.FHIRAI_DICOM_ENGINE = request.param
    sources_changed()  # the allow-list rows are cached per process for a few seconds
    port = free_port()
    server = server_start(("127.0.0.1", port))
    yield port
    server.shutdown()
    sources_changed()


def _assoc(port: int, *contexts: object):
    scu = AE(ae_title="TESTSCU")
    for context in contexts:
        scu.add_requested_context(context)
    assoc = scu.associate("127.0.0.1", port, ae_title="FHIRAI")
    assert assoc.is_established
    return assoc


def test_c_echo_succeeds(scp):
    assoc = _assoc(scp, Verification)
    assert assoc.send_c_echo().Status == status.SUCCESS
    assoc.release()


def test_c_store_success_means_the_instance_is_committed(scp, phantom, blob_dir):
    assoc = _assoc(scp, CTImageStorage)
    for raw in phantom.files[:3]:
        assert assoc.send_c_store(dcmread(BytesIO(raw))).Status == status.SUCCESS
        # Success has arrived: the row must already be visible to another connection.
        assert Instance.objects.filter(sop_instance_uid=dcmread(BytesIO(raw)).SOPInstanceUID).exists()
    assoc.release()
    study = Study.objects.get()
    assert study.instance_count == 3 and study.calling_ae == "TESTSCU"


def test_a_dataset_missing_its_study_uid_is_kept_with_a_warning_and_not_processed(scp, phantom, blob_dir):
    ds = dcmread(BytesIO(phantom.files[0]))
    del ds.StudyInstanceUID
    assoc = _assoc(scp, CTImageStorage)
    reply = assoc.send_c_store(ds)
    assoc.release()
    # Stored (as dcmtk's storescp would) but not processed: Warning B007, listed as rejected.
    assert reply.Status == status.WARNING_KEPT == 0xB007
    assert reply.ErrorComment == "kept, not processed: StudyInstanceUID is missing"
    rejection = Rejection.objects.get()
    assert rejection.protocol == "dicom" and rejection.code == "missing-attribute" and rejection.blob_key
    assert not Instance.objects.exists()


def test_store_refused_with_out_of_resources_when_blobs_cannot_be_written(scp, phantom, settings, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    settings.FHIRAI_BLOB_DIR = blocker / "blobs"
    assoc = _assoc(scp, CTImageStorage)
    reply = assoc.send_c_store(dcmread(BytesIO(phantom.files[0])))
    assoc.release()
    assert reply.Status == status.OUT_OF_RESOURCES
    assert not Instance.objects.exists()


def test_compressed_transfer_syntaxes_are_accepted_for_ct():
    ae = application_entity()
    contexts = {c.abstract_syntax: c.transfer_syntax for c in ae.supported_contexts}
    assert JPEGBaseline8Bit in contexts[CTImageStorage] and JPEG2000Lossless in contexts[CTImageStorage]


def test_a_calling_ae_not_allowed_is_rejected_and_an_allowed_one_gets_in(scp, settings):
    from fhirai.ingest.sources import source_rule_add

    settings.FHIRAI_DICOM_ALLOW = ["CT_ROOM_2"]
    scu = AE(ae_title="TESTSCU")
    scu.add_requested_context(Verification)
    refused = scu.associate("127.0.0.1", scp, ae_title="FHIRAI")
    assert refused.is_rejected
    assert refused.acceptor.primitive.result_source == 0x01 and refused.acceptor.primitive.diagnostic == 0x03
    for _ in range(100):  # the acceptor records it just after sending the A-ASSOCIATE-RJ
        if Rejection.objects.exists():
            break
        time.sleep(0.02)
    [kept] = Rejection.objects.all()
    assert kept.code == "calling-ae-not-allowed" and kept.peer.startswith("TESTSCU@")
    source_rule_add("dicom-ae", "TESTSCU", actor="test")  # as the console does: no restart
    assoc = _assoc(scp, Verification)
    assert assoc.send_c_echo().Status == status.SUCCESS
    assoc.release()


def test_a_lost_database_connection_is_replaced_within_the_association(scp, phantom, blob_dir):
    """Found by the fault suite: after PostgreSQL restarted, an association kept answering A700
    on its dead connection for as long as the modality kept it open."""
    from django.db import connection

    assoc = _assoc(scp, CTImageStorage)
    first, second, third = (dcmread(BytesIO(raw)) for raw in phantom.files[:3])
    assert assoc.send_c_store(first).Status == status.SUCCESS
    with connection.cursor() as cursor:  # what a database restart does to the SCP's connection
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    answers = [assoc.send_c_store(ds).Status for ds in (second, third)]
    assoc.release()
    # The first C-STORE after the loss may meet the dead connection (A700, the modality resends);
    # by the next one the SCP has reconnected.
    assert answers[-1] == status.SUCCESS and set(answers) <= {status.SUCCESS, status.OUT_OF_RESOURCES}
    assert Instance.objects.filter(sop_instance_uid=third.SOPInstanceUID).exists()
