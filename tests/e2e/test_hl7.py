"""HL7 v2 end to end against the real product: MLLP in, the study linked to its order and patient."""

from __future__ import annotations

import socket
import time

import hl7.client
import psycopg
import pytest

from tests.e2e.conftest import write_study
from tests.support.hl7msg import adt, message, msh, orm
from tests.support.mllp_peer import MllpPeer
from tests.support.phantom import ct_phantom
from tests.support.product import store_files

pytestmark = pytest.mark.e2e


def _ack(port: int, raw: bytes) -> str:
    with hl7.client.MLLPClient("127.0.0.1", port) as client:
        reply = client.send_message(raw).strip(b"\x0b\x1c\x0d").decode()
    msa = next(seg for seg in reply.split("\r") if seg.startswith("MSA"))
    return msa.split("|")[1]


def _wait_mllp(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError("MLLP port never opened")


def test_adt_orm_then_study_gives_a_report_for_that_patient_and_order_and_an_oru(make_product, tmp_path):
    peer = MllpPeer().__enter__()
    product = make_product(FHIRAI_HL7_PEERS=f"EHR=127.0.0.1:{peer.port}")
    product.start()
    _wait_mllp(product.mllp_port)
    pid = "PID|1||MRN-5150^^^HOSP^MR||Examplo^Carla||19700202|F"
    assert _ack(product.mllp_port, adt("E2E-A1", pid=pid)) == "AA"
    assert _ack(product.mllp_port, orm("E2E-O1", accession="ACC-E2E-1", pid=pid)) == "AA"
    ph = ct_phantom(
        slices=12, size=64, seed=51, identity={"AccessionNumber": "ACC-E2E-1", "PatientID": "MRN-5150"}
    )
    store_files(write_study(ph, tmp_path / "study"), product.dicom_port)
    uid = ph.identifiers["StudyInstanceUID"]
    found = product.wait_for(f"/fhir/DiagnosticReport?study={uid}", lambda b: b.get("total") == 1)
    report = found["entry"][0]["resource"]
    patient = product.get("/fhir/Patient?identifier=MRN-5150")["entry"][0]["resource"]
    order = product.get("/fhir/ServiceRequest?identifier=ACC-E2E-1")["entry"][0]["resource"]
    assert report["subject"]["reference"] == f"Patient/{patient['id']}"
    assert report["basedOn"][0]["reference"] == f"ServiceRequest/{order['id']}"
    assert (
        patient["name"][0]["family"] == "Examplo"
        and order["subject"]["reference"] == f"Patient/{patient['id']}"
    )


def test_killed_right_after_the_acks_no_message_is_lost(make_product, database):
    product = make_product()
    product.start()
    _wait_mllp(product.mllp_port)
    mrns = [f"MRN-K{i:03d}" for i in range(20)]
    with hl7.client.MLLPClient("127.0.0.1", product.mllp_port) as client:
        for i, mrn in enumerate(mrns):
            raw = message(
                msh(f"KILL-{i}", "ADT^A04^ADT_A01"), "EVN|A04", f"PID|1||{mrn}^^^HOSP^MR||Kill^Test{i}"
            )
            assert b"MSA|AA|" in client.send_message(raw)
    product.kill()  # SIGKILL the whole product the moment the last ACK arrived
    with psycopg.connect(database.url) as conn:
        assert conn.execute("SELECT count(*) FROM ingest_message").fetchone()[0] == len(mrns)
    product.start()
    for mrn in mrns:
        product.wait_for(f"/fhir/Patient?identifier={mrn}", lambda b: b.get("total") == 1, timeout=60)
