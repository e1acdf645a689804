"""Results out: ORU^R01 to an EHR peer over MLLP, through the same outbox as FHIR write-back."""

from __future__ import annotations

import pytest

from fhirai.context.messages import messages_process
from fhirai.ingest.messages import messages_receive
from fhirai.ingest.models import Study, StudyState
from fhirai.results.models import Delivery, DeliveryState
from fhirai.results.writeback import delivery_attempt
from integrations.hl7.handlers import inbound_from
from tests.support import pipeline
from tests.support.hl7msg import adt, orm
from tests.support.mllp_peer import MllpPeer
from tests.support.phantom import ct_phantom

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def reported(settings, blob_dir):
    def make(peer_port: int) -> Delivery:
        settings.FHIRAI_HL7_PEERS = {"EHR": ("127.0.0.1", peer_port)}
        settings.FHIRAI_HL7_TIMEOUT = 2
        stored = messages_receive([inbound_from(raw, "t")[1] for raw in (adt("A-1"), orm("O-1"))])
        messages_process(up_to=max(s.message_id for s in stored))
        ph = ct_phantom(
            slices=8, size=48, seed=61, identity={"AccessionNumber": "ACC-9001", "PatientID": "MRN-4411"}
        )
        pipeline.run_all(ph, settings)
        return Delivery.objects.get(destination="mllp:EHR")

    return make


def test_oru_reaches_the_peer_with_order_numbers_and_typed_observations(reported):
    with MllpPeer() as peer:
        delivery = reported(peer.port)
        delivery_attempt(delivery.pk)
        delivery.refresh_from_db()
        assert delivery.state == DeliveryState.DELIVERED and "MSA|AA" in delivery.last_response
        assert Study.objects.get().state == StudyState.WRITTEN_BACK
        seg = peer.segments()
    msh, pid, orc, obr = seg["MSH"][0], seg["PID"][0], seg["ORC"][0], seg["OBR"][0]
    assert msh[8] == "ORU^R01^ORU_R01" and msh[11] == "2.5.1" and msh[17] == "UNICODE UTF-8"
    assert pid[3] == "MRN-4411^^^HOSP^MR" and pid[5] == "Examplo^Berta M" and pid[7] == "19610704"
    assert orc[1:4] == ["RE", "PL-77", "FL-88"]
    assert obr[2:5] == ["PL-77", "FL-88", "CTCHEST^CT Chest^L"] and obr[18] == "ACC-9001" and obr[25] == "P"
    numeric = [o for o in seg["OBX"] if o[2] == "NM"]
    assert {o[6] for o in numeric} == {"mL^mL^UCUM", "%^%^UCUM"}
    assert all(o[11] == "P" for o in seg["OBX"]) and seg["OBX"][-1][2] in ("ST", "TX")
    # IHE AI Results: the EHR is told this is machine-generated and not yet reviewed.
    assert "not yet reviewed by a clinician" in seg["NTE"][0][3]


def test_a_refusing_peer_is_a_visible_failure(reported):
    with MllpPeer(answer="AE") as peer:
        delivery = reported(peer.port)
        delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.FAILED and "MSA|AE" in delivery.last_response
    study = Study.objects.get()
    assert study.state == StudyState.FAILED and "mllp:EHR refused the report" in study.error


def test_a_silent_or_absent_peer_is_retried(reported):
    with MllpPeer(answer="silent") as peer:
        delivery = reported(peer.port)
        delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.PENDING and delivery.attempts == 1
    assert Study.objects.get().state == StudyState.REPORTED


def test_a_resend_repeats_the_message_id_so_the_ehr_can_discard_it(reported):
    """Found by the fault suite: each attempt built its ORU with a fresh MSH-10, so an EHR whose
    answer was lost (a timeout, a killed worker) received the same result twice under two IDs."""
    with MllpPeer(answer="silent") as peer:
        delivery = reported(peer.port)
        delivery_attempt(delivery.pk)  # no answer: the delivery stays pending
        peer.answer = "AA"
        Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=delivery.created_at)
        delivery_attempt(delivery.pk)
        ids = [peer.segments(i)["MSH"][0][9] for i in range(len(peer.messages))]
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.DELIVERED
    assert len(ids) == 2 and ids[0] == ids[1] == f"FAD{delivery.pk}"
