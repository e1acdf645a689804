"""Storage Commitment for results sent to a PACS (PS3.4 Annex J, IHE RAD-10): after the C-STOREs the
delivery asks the PACS (a real Orthanc) to commit the SR and key image; Orthanc answers with an
N-EVENT-REPORT on an association of its own to fhirai's real SCP, and the delivery's commitment
is recorded. A report naming objects the PACS does not keep fails the delivery visibly; a PACS
without the service (dcmtk's storescp) stores the objects and the refusal is recorded."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance  # type: ignore[attr-defined]

from fhirai.results.models import Commitment, Delivery
from fhirai.results.writeback import delivery_attempt
from integrations.dicom import status
from tests.support import pipeline
from tests.support.orthanc import ORTHANC, orthanc_running
from tests.support.product import free_port, port_open

pytestmark = pytest.mark.django_db(transaction=True)


def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


@pytest.mark.skipif(not shutil.which(ORTHANC), reason="needs Debian's orthanc package")
def test_orthanc_commits_the_sr_and_key_image_by_a_report_to_fhirai(
    phantom, settings, blob_dir, scp, tmp_path
):
    with orthanc_running(tmp_path / "pacs", modalities={"fhirai": ("FHIRAI", "127.0.0.1", scp)}) as pacs:
        settings.FHIRAI_FHIR_UPSTREAM_URL = ""
        settings.FHIRAI_PACS_DESTINATIONS = {"PACS": ("ORTHANC", "127.0.0.1", pacs["dicom"])}
        settings.FHIRAI_PACS_COMMITMENT = True
        study = pipeline.run_all(phantom, settings)
        delivery = Delivery.objects.get()
        delivery_attempt(delivery.pk)
        delivery.refresh_from_db()
        assert delivery.state == "delivered", delivery.last_response
        commitment = Commitment.objects.get(delivery=delivery)
        assert len(commitment.references) == 2  # the SR and the key image
        _wait(lambda: Commitment.objects.get(pk=commitment.pk).state != "requested")
    commitment.refresh_from_db()
    assert commitment.state == "committed" and commitment.failed == [], commitment.detail
    assert "ORTHANC" in commitment.detail
    study.refresh_from_db()
    assert study.state == "written_back"


def _report(
    port: int, transaction_uid: str, committed: list[tuple[str, str]], failed: list[tuple[str, str]]
) -> int:
    """N-EVENT-REPORT as a PACS sends it: its own association, itself the SCP of the SOP class."""
    pacs = AE(ae_title="PACS")
    pacs.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scp_role=True, scu_role=False)
    assoc = pacs.associate("127.0.0.1", port, ae_title="FHIRAI", ext_neg=[role])
    assert assoc.is_established
    info = Dataset()
    info.TransactionUID = transaction_uid
    ok_items, failed_items = [], []
    for sop_class, uid in committed:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, uid
        ok_items.append(item)
    for sop_class, uid in failed:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID, item.FailureReason = sop_class, uid, 0x0110
        failed_items.append(item)
    if ok_items:
        info.ReferencedSOPSequence = ok_items
    if failed_items:
        info.FailedSOPSequence = failed_items
    reply, _ = assoc.send_n_event_report(
        info, 2 if failed else 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
    )
    assoc.release()
    return int(reply.Status)


@pytest.mark.parametrize("scp", ["fhirai", "pynetdicom"], indirect=True)  # both SCP engines take reports
def test_objects_the_pacs_does_not_commit_fail_the_delivery_visibly(
    phantom, settings, blob_dir, scp, tmp_path
):
    storescp_port = free_port()
    storescp = subprocess.Popen(
        ["storescp", "-od", str(tmp_path), "-aet", "STORESCP", str(storescp_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: port_open(storescp_port), 10)
        settings.FHIRAI_FHIR_UPSTREAM_URL = ""
        settings.FHIRAI_PACS_DESTINATIONS = {"PACS": ("STORESCP", "127.0.0.1", storescp_port)}
        settings.FHIRAI_PACS_COMMITMENT = True
        study = pipeline.run_all(phantom, settings)
        delivery = Delivery.objects.get()
        delivery_attempt(delivery.pk)  # storescp stores, but offers no storage commitment
    finally:
        storescp.terminate()
        storescp.wait(10)
    delivery.refresh_from_db()
    commitment = Commitment.objects.get(delivery=delivery)
    assert delivery.state == "delivered" and commitment.state == "refused"
    assert "does not offer Storage Commitment" in commitment.detail

    # A PACS that does answer, naming one object it does not keep (as if it were another commitment):
    Commitment.objects.filter(pk=commitment.pk).update(state="requested", detail="")
    (sr_class, sr_uid), (key_class, key_uid) = commitment.references
    assert (
        _report(scp, commitment.transaction_uid, [(sr_class, sr_uid)], [(key_class, key_uid)])
        == status.SUCCESS
    )
    commitment.refresh_from_db()
    delivery.refresh_from_db()
    study.refresh_from_db()
    assert commitment.state == "failed" and commitment.failed == [[key_uid, 0x0110]]
    assert delivery.state == "failed" and f"{key_uid}: 0110 processing failure" in delivery.last_response
    assert study.state == "failed" and "did not commit 1 of 2" in study.error
    assert _report(scp, "1.2.3.999", [(sr_class, sr_uid)], []) == status.NO_SUCH_SOP_INSTANCE  # never asked
