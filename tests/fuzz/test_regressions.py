"""Inputs the fuzz targets found that broke the product, each pinned as a plain test."""

from __future__ import annotations

import base64
import json
import time

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dsutils import encode

from fhirai.context.messages import messages_process
from fhirai.ingest.models import Instance, Message, MessageState, Rejection
from integrations.dicom import pdu, status
from integrations.dicom.handlers import store_answer
from integrations.hl7.mllp import Frame, Framer
from integrations.webhooks import signing
from tests.fuzz.test_hl7 import check_receive
from tests.support.hl7msg import adt, message, msh


def test_frame_of_exactly_max_bytes_split_between_fs_and_cr_is_not_oversize():
    """Found by mllp_framer_any_bytes: the <FS> of an end block split across reads was counted
    against max_bytes, so a message of exactly the limit was refused as oversize."""
    framer = Framer(5)
    assert framer.feed(b"\x0bHELLO\x1c") == []
    [frame] = framer.feed(b"\x0d")
    assert (frame.problem, frame.payload) == ("", b"HELLO")
    empty = Framer(0)
    assert empty.feed(b"\x0b\x1c") == [] and [f.problem for f in empty.feed(b"\x0d")] == [""]


def test_oversize_frame_whose_kept_header_ends_in_fs_does_not_end_at_a_later_cr():
    """The kept header of an oversize frame ending in <FS> made the next read's leading <CR> end
    the frame early; the rest of the frame was then dropped as noise."""
    framer = Framer(2)
    frames = []
    for chunk in (b"\x0bab\x1c", b"zz", b"\rrest", b"\x1c\r"):
        frames += framer.feed(chunk)
    assert [f.problem for f in frames] == ["oversize"] and framer.dropped == 0
    assert framer.pending() is None


# --- HL7 receive and processing ------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "raw",
    [
        message(msh("C\x001", "ADT^A01"), "PID|1||X"),  # NUL in MSH-10
        message(msh("C1", "ADT^A01", "2.5\x00"), "PID|1||X"),  # NUL in MSH-12, echoed in the detail
        message(msh("C5", "ADT^A01"), "PID|1||M\x00X^^^HOSP^MR||N\x00^G"),  # NUL in the body
    ],
)
def test_nul_characters_get_ae_and_are_kept_as_rejections(handler, caplog, raw):
    """A NUL in MSH-10 made the commit fail (AR "temporarily unable": the sender resends forever);
    in MSH-12 the rejection itself could not be kept; in the body the message was accepted and then
    blocked processing. All three now get AE with ERR at the door and are kept."""
    loop, handle = handler
    reply = loop.run_until_complete(handle(Frame(raw), "fuzz@127.0.0.1:1")).decode()
    assert "|AE|" in reply and "\rERR|" in reply
    assert Rejection.objects.count() == 1 and not Message.objects.exists()
    check_receive(handler, caplog, raw)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "raw",
    [
        message(msh("C2", "ADT^A01"), "PID|1||" + "M" * 400 + "^^^HOSP^MR"),
        message(msh("C3", "ADT^A01"), "PID|1||M1^^^HOSP^MR||" + "N" * 500 + "^G||19700101|F"),
        message(
            msh("C4", "ORM^O01"),
            "PID|1||M1^^^HOSP^MR",
            "OBR|1|P|F|" + "C" * 300 + "||||||||||||||" + "A" * 300,
        ),
    ],
)
def test_values_too_long_for_their_columns_fail_the_message_not_the_pipeline(handler, caplog, raw):
    """An MRN, name or order number longer than its column raised DataError out of message_apply:
    the message stayed `received` and, applied in order, blocked every later message."""
    check_receive(handler, caplog, raw)
    failed = Message.objects.get()
    assert failed.state == MessageState.FAILED and "cannot be stored" in failed.error
    assert "MMMM" not in failed.error and "NNNN" not in failed.error
    later = Message.objects.create(
        sender="RIS^HOSP",
        control_id="LATER",
        message_type="ADT^A01",
        version="2.5.1",
        codec="utf-8",
        raw=adt("LATER"),
        received_at=failed.received_at,
    )
    messages_process(later.pk)
    later.refresh_from_db()
    assert later.state == MessageState.PROCESSED


# --- FHIR facade -----------------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/fhir/Patient?family=%00",
        "/fhir/Patient?identifier=%00",
        "/fhir/Patient?_id=%00",
        "/fhir/Observation?patient=%00",
        "/fhir/AuditEvent?subtype=%00",
        "/fhir/Patient/%00",
        "/fhir/Patient?_offset=99999999999999999999",
        "/fhir/Patient?birthdate=gt9999-12-31T23:59:59Z",
        "/fhir/Patient?birthdate=9999-12-31",
        "/fhir/Patient?_lastUpdated=0001-01-01T00:00:00%2B14:00",
    ],
)
def test_search_and_read_refuse_unstorable_values_with_400(client, url):
    """NUL in a search value or id (PostgreSQL refuses it in text), an _offset beyond bigint, and a
    date whose range leaves years 1-9999 were 500s (DataError, OverflowError); now a 400 outcome."""
    response = client.get(url)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Patient", "name": [{"family": "a\x00b"}]},
        {"resourceType": "Patient", "identifier": [{"system": "s", "value": "\x00"}]},
        {"resourceType": "Patient", "\x00": 1},
    ],
)
def test_a_nul_in_a_fhir_json_body_is_a_400_not_a_503(client, body):
    """The insert failed with DataError, answered 503 "retry later": the client would resend forever."""
    response = client.post("/fhir/Patient", data=json.dumps(body), content_type="application/fhir+json")
    assert response.status_code == 400 and "NUL" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.django_db
def test_a_date_at_the_end_of_year_9999_is_stored_without_its_index(client):
    """date_range raised OverflowError for the day after 9999-12-31 (a 500 on create)."""
    body = {"resourceType": "Patient", "birthDate": "9999-12-31"}
    response = client.post("/fhir/Patient", data=json.dumps(body), content_type="application/fhir+json")
    assert response.status_code in (201, 400)


def _nested_extension(levels: int) -> dict:
    extension: dict = {"url": "u", "valueString": "v"}
    for _ in range(levels):
        extension = {"url": "u", "extension": [extension]}
    return extension


@pytest.mark.django_db
def test_a_resource_nested_past_the_validators_recursion_is_a_400(client):
    """400 levels of nested extensions made the R4B validator raise RecursionError (a 500)."""
    body = json.dumps({"resourceType": "Patient", "extension": [_nested_extension(400)]})
    response = client.post("/fhir/Patient", data=body, content_type="application/fhir+json")
    assert response.status_code == 400 and "nested deeper" in response.content.decode()
    deep_json = b"[" * 5000 + b"]" * 5000  # json.loads itself recursed too deep
    response = client.post("/fhir/Patient", data=deep_json, content_type="application/fhir+json")
    assert response.status_code == 400
    ordinary = json.dumps({"resourceType": "Patient", "extension": [_nested_extension(20)]})
    assert (
        client.post("/fhir/Patient", data=ordinary, content_type="application/fhir+json").status_code == 201
    )


# --- webhooks --------------------------------------------------------------------------------------
HOOK_SECRET = "whsec_" + base64.b64encode(b"regression-secret-tests-only-32b").decode()


def test_a_timestamp_too_large_for_a_float_is_an_invalid_signature_not_an_overflow():
    """int('9' * 400) parsed, then `now - sent_at` raised OverflowError: a 500 at /hooks."""
    with pytest.raises(signing.SignatureInvalid):
        signing.verify(
            HOOK_SECRET,
            message_id="0",
            timestamp="9" * 400,
            signatures="v1,x",
            body=b"",
            now=0.0,
            tolerance=300,
        )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content_type", "body", "message_id", "status"),
    [
        (
            "application/fhir+json",
            b'{"resourceType": "Patient", "name": [{"family": "a\\u0000b"}]}',
            "m1",
            400,
        ),
        ("application/json", b'{"resourceType": "Patient", "name": [{"family": "a\\u0000b"}]}', "m2", 400),
        ("application/fhir+json", b"[" * 5000 + b"]" * 5000, "m3", 400),
        ("application/json", b"[" * 5000 + b"]" * 5000, "m4", 415),
        ("application/json", b'{"type": "item.retry", "item": "message/1"}', "m\x005", 400),
    ],
)
def test_signed_hooks_with_unstorable_or_too_deep_bodies_are_refused_not_500_or_503(
    client, settings, blob_dir, content_type, body, message_id, status
):
    """A NUL in a FHIR body was a 503 (retry forever), deep JSON a RecursionError and a NUL in
    webhook-id a DataError (500s); each is now refused with a 4xx and kept."""
    settings.FHIRAI_HOOK_SOURCES = {"engine": HOOK_SECRET}
    headers = signing.headers(HOOK_SECRET, message_id, int(time.time()), body)
    response = client.post("/hooks/engine", data=body, content_type=content_type, headers=headers)
    assert response.status_code == status
    assert Rejection.objects.filter(protocol="webhook").count() == 1


# --- DICOM receive ---------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_an_element_with_an_unknown_vr_is_refused_and_kept_not_out_of_resources(blob_dir):
    """Found by dicom_raw_pdus: a byte-mutated data set whose ImageType carried the VR "BS" parsed,
    then pydicom raised NotImplementedError when the receive read ImageType; the SCP answered
    A700 "internal error; retry later" (a PACS resends it forever) and kept nothing."""
    ds = dcmread(get_testdata_file("MR_small.dcm"))
    data = encode(ds, False, True)
    assert data is not None and b"\x08\x00\x08\x00CS" in data
    data = data.replace(b"\x08\x00\x08\x00CS", b"\x08\x00\x08\x00BS", 1)
    raw = pdu.part10_prefix(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian) + data
    code, comment = store_answer(
        raw=raw, calling_ae="FUZZ", peer="FUZZ@127.0.0.1:1", transfer_syntax_uid=ExplicitVRLittleEndian
    )
    assert code not in (status.OUT_OF_RESOURCES, status.SUCCESS) and "ImageType" in comment
    assert Rejection.objects.filter(protocol="dicom", code="unparseable").count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "keyword", ["PatientName", "PatientID", "AccessionNumber", "StudyDate", "SeriesDescription"]
)
def test_a_nul_in_an_indexed_text_element_is_stored_not_out_of_resources(blob_dir, keyword):
    """Found by dicom_scu_mutated_datasets: a NUL inside PatientName (or another indexed text
    element) made the insert fail with DataError, answered A700 "temporarily unable to store":
    the PACS resends forever. The index now leaves the NUL out; the blob keeps the bytes."""
    ds = dcmread(get_testdata_file("MR_small.dcm"))
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    setattr(ds, keyword, "A\x00B")
    data = encode(ds, False, True)
    raw = pdu.part10_prefix(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian) + data
    code, _ = store_answer(
        raw=raw, calling_ae="FUZZ", peer="FUZZ@127.0.0.1:1", transfer_syntax_uid=ExplicitVRLittleEndian
    )
    assert code == status.SUCCESS
    assert Instance.objects.filter(sop_instance_uid="1.2.826.0.1.3680043.8.498.77").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "inner",
    [
        '<identifier><gender value="x"/><system value="urn:oid:1.2.3"/><value value="P1"/></identifier>',
        '<identifier><s0ystem value="urn:oid:1.2.3"/><value value="P1"/></identifier>',
        '<name><gender value="x"/><family value="Doe"/></name>',
    ],
)
def test_fhir_xml_with_an_element_its_type_does_not_define_is_a_400(client, inner):
    """Found by the long run (fhir_create_xml): fhir.resources' XML reader raised KeyError for an
    element unknown to a complex type (Identifier.gender), a 500."""
    body = f'<Patient xmlns="http://hl7.org/fhir">{inner}<birthDate value="1970-01-02"/></Patient>'
    response = client.post("/fhir/Patient", data=body, content_type="application/fhir+xml")
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("damage", ["truncated in a sequence", "sequence of undefined length 0xFFFFFFFF"])
def test_a_data_set_pydicom_cannot_read_is_refused_and_kept_not_out_of_resources(blob_dir, damage):
    """Found by the long run (dicom_raw_pdus): dcmread raised struct.error (a data set cut inside a
    sequence) or OSError ("No tag to read", a sequence length past the end), which the header
    parse did not catch: the SCP answered A700 "internal error; retry later" and kept nothing."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    data = encode(ds, False, True)
    assert data is not None
    sequence = b"SQ\x00\x00H\x00\x00\x00"
    if damage.startswith("truncated"):
        data = data[: data.find(sequence) + 4]
    else:
        data = data.replace(sequence, b"SQ\x00\x00\xff\xff\xff\xff", 1)
    raw = pdu.part10_prefix(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian) + data
    code, _ = store_answer(
        raw=raw, calling_ae="FUZZ", peer="FUZZ@127.0.0.1:1", transfer_syntax_uid=ExplicitVRLittleEndian
    )
    assert code not in (status.OUT_OF_RESOURCES, status.SUCCESS)
    assert Rejection.objects.filter(protocol="dicom", code="unparseable").count() == 1
