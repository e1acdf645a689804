"""DICOM receive path: fhirai's own acceptor (integrations.dicom.acceptor + pdu) on a real socket,
with the real ingest behind it. (a) A real SCU (pynetdicom) sends C-STOREs of element-mutated
datasets, and a hand-written requestor sends valid commands with byte-mutated data sets: every
instance gets a DICOM status, Success means the row exists. (b) Garbage, mutated A-ASSOCIATE-RQs and
bogus P-DATA on raw sockets: the SCP answers with A-ASSOCIATE-RJ/A-ABORT or closes, within a bound.
After every example a fresh C-ECHO must succeed, and nothing is logged as a failure of fhirai's."""

from __future__ import annotations

import copy
import logging
import socket
import struct
import time
from io import BytesIO

import pytest
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    RTPlanStorage,
    Verification,
)

from fhirai.ingest.models import Instance, Rejection
from integrations.dicom import pdu, status
from integrations.dicom.scp import server_start
from tests.fuzz.budget import fuzz_target
from tests.integrations.dicom.test_acceptor import _associate_rq, _command, _p_data, _pdv, _recv_pdu
from tests.support.product import free_port

pytestmark = pytest.mark.django_db(transaction=True)
BASES = [dcmread(get_testdata_file(name)) for name in ("MR_small.dcm", "rtplan.dcm", "CT_small.dcm")]
CLASSES = [MRImageStorage, RTPlanStorage, CTImageStorage]
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
BOUND = 10.0  # seconds the SCP may take to answer or close after the requestor is done


@pytest.fixture
def scp(settings, blob_dir, caplog):
    """fhirai's acceptor on a free port. pydicom writes invalid values without complaint (the SCU
    side of the fuzz); reading, which the SCP does, keeps its default."""
    settings.FHIRAI_DICOM_ENGINE = "fhirai"
    saved = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    port = free_port()
    server = server_start(("127.0.0.1", port))
    yield port
    server.shutdown()
    pydicom_config.settings.writing_validation_mode = saved


def _scu() -> AE:
    ae = AE(ae_title="FUZZSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = BOUND
    for uid in CLASSES:
        ae.add_requested_context(uid, SYNTAXES)
    ae.add_requested_context(Verification)
    return ae


def echo_succeeds(port: int) -> None:
    assoc = _scu().associate("127.0.0.1", port, ae_title="FHIRAI")
    assert assoc.is_established, "the SCP no longer accepts associations"
    result = assoc.send_c_echo()
    assoc.release()
    assert result.get("Status") == 0x0000


def no_failures_logged(caplog) -> None:
    bad = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(("fhirai", "integrations"))
    ]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


def check_status(code: int | None, sop_instance_uid: str, rejections_before: int) -> None:
    """A status came back; Success means a row, a warning or failure means the input was kept."""
    assert code is not None, "no C-STORE response (aborted or timed out)"
    assert code != status.OUT_OF_RESOURCES, "refused as transient: a sender would retry it forever"
    if code == status.SUCCESS:
        assert Instance.objects.filter(sop_instance_uid=sop_instance_uid).exists()
    else:
        assert Rejection.objects.filter(protocol="dicom").count() > rejections_before


# --- (a) mutated datasets from a real SCU ----------------------------------------------------------
texts = st.text(max_size=30) | st.sampled_from(
    [
        "",
        "\x00",
        "A\x00B",
        "x" * 70,
        "1.2.3",
        "1." + "9" * 70,
        "01.2",
        "1..2",
        "a\\b\\c",
        "Ünïcødé",
        "20261340",
        "-5",
    ]
)
KEYWORDS = [
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyDate",
    "StudyTime",
    "Modality",
    "InstanceNumber",
    "SeriesDescription",
    "ImageOrientationPatient",
    "SpecificCharacterSet",
    "ImageType",
    "PatientBirthDate",
    "StudyID",
]


@st.composite
def mutated_dataset(draw: st.DrawFn) -> tuple[Dataset, str, int]:
    """(dataset, transfer syntax, index of its base): a base file with elements changed or removed."""
    n = draw(st.integers(0, len(BASES) - 1))
    ds = copy.deepcopy(BASES[n])
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{draw(st.integers(1, 10**12))}"
    for _ in range(draw(st.integers(0, 5))):
        keyword = draw(st.sampled_from(KEYWORDS))
        action = draw(st.integers(0, 4))
        if action == 0:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            if keyword == "ImageOrientationPatient":
                value: object = draw(
                    st.lists(st.sampled_from(["1", "0", "-1", "nan", "1e999", "x", ""]), max_size=7)
                )
            elif keyword == "InstanceNumber":
                value = draw(st.sampled_from(["1", "-1", "99999999999", "x", "", "1.5"]))
            else:
                value = draw(texts)
            try:
                setattr(ds, keyword, value)
            except (ValueError, TypeError, OverflowError):  # pydicom will not hold it
                pass
    if draw(st.integers(0, 3)) == 0:
        ds.add_new(0x00091010, "LO", draw(texts))  # a private element without its creator
    return ds, draw(st.sampled_from(SYNTAXES)), n


@fuzz_target("dicom_scu_mutated_datasets", ci=40, items=st.lists(mutated_dataset(), min_size=1, max_size=3))
def test_mutated_datasets_from_a_real_scu_each_get_a_status(scp, caplog, items):
    caplog.clear()
    ae = _scu()
    assoc = ae.associate("127.0.0.1", scp, ae_title="FHIRAI")
    assert assoc.is_established
    try:
        for ds, syntax, _base in items:
            rejections = Rejection.objects.filter(protocol="dicom").count()
            try:
                encoded = encode(ds, syntax == ImplicitVRLittleEndian, True)
            except Exception:  # noqa: BLE001 - pydicom cannot write it: nothing to send
                continue
            if encoded is None or not isinstance(ds.get("SOPClassUID"), str) or not ds.SOPClassUID:
                continue
            ds.file_meta.TransferSyntaxUID = syntax
            try:
                result = assoc.send_c_store(ds)
            except (ValueError, AttributeError, TypeError):  # the SCU refuses to send it
                continue
            if not assoc.is_established:
                pytest.fail(f"the association ended: {result!r}")
            code = result.get("Status")
            check_status(code, str(ds.get("SOPInstanceUID", "")), rejections)
    finally:
        if assoc.is_established:
            assoc.release()
    no_failures_logged(caplog)
    echo_succeeds(scp)


# --- raw requestor: byte-mutated data sets and broken PDUs --------------------------------------
def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 4))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == 0 and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == 1 and out:
            out[at] = draw(st.integers(0, 255))
        elif kind == 2:
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == 3 and out:
            del out[at : at + draw(st.integers(1, 16))]
        elif kind == 4 and len(out) >= at + 4:
            out[at : at + 4] = struct.pack(
                "<I", draw(st.sampled_from([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 3, 0xFFFF]))
            )
    return bytes(out)


def _drain(sock: socket.socket) -> list[int]:
    """The PDU types the SCP sends until it closes; fails past BOUND seconds."""
    sock.settimeout(BOUND)
    types, deadline = [], time.monotonic() + BOUND
    while True:
        try:
            pdu_type, _ = _recv_pdu(sock)
        except (ConnectionError, AssertionError):  # reset, or closed inside a PDU after an abort
            return types
        except TimeoutError:
            pytest.fail(f"the SCP neither answered nor closed within {BOUND} s (got {types})")
        if pdu_type == 0:
            return types
        types.append(pdu_type)
        assert time.monotonic() < deadline, f"still sending after {BOUND} s"


@st.composite
def raw_session(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """What a broken requestor sends: (kind, byte strings in order)."""
    kind = draw(st.sampled_from(["garbage", "associate", "pdata", "dataset"]))
    n = draw(st.integers(0, len(BASES) - 1))
    syntax = draw(st.sampled_from(SYNTAXES))
    rq = _associate_rq([(1, CLASSES[n], [syntax]), (3, Verification, [ImplicitVRLittleEndian])])
    if kind == "garbage":
        return kind, [draw(st.binary(max_size=300) | st.binary(max_size=6).map(lambda b: b"\x01\x00" + b))]
    if kind == "associate":
        return kind, [_mutate(rq, draw)]
    ds = BASES[n]
    data = encode(ds, syntax == ImplicitVRLittleEndian, True)
    assert data is not None
    uid = f"1.2.826.0.1.3680043.8.498.{draw(st.integers(1, 10**12))}"
    command = _command(pdu.C_STORE_RQ, 1, CLASSES[n], uid)
    if kind == "dataset":  # a valid command, a byte-mutated data set
        return kind, [rq, _p_data(_pdv(1, 0x03, command)), _p_data(_pdv(1, 0x02, _mutate(data, draw)))]
    pieces = [_p_data(_pdv(1, 0x03, command)), _p_data(_pdv(1, 0x02, data[:2000]))]
    broken = draw(st.integers(0, len(pieces) - 1))
    pieces[broken] = _mutate(pieces[broken], draw)
    if draw(st.booleans()):
        pieces.append(draw(st.binary(max_size=40)))
    return kind, [rq, *pieces]


@fuzz_target("dicom_raw_pdus", ci=90, session=raw_session())
def test_broken_pdus_are_answered_or_closed_and_the_scp_keeps_serving(scp, caplog, session):
    caplog.clear()
    kind, pieces = session
    rejections = Rejection.objects.filter(protocol="dicom").count()
    with socket.create_connection(("127.0.0.1", scp), timeout=BOUND) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
            if kind == "dataset":  # the whole message went out: its status (or an abort) comes back
                sock.settimeout(BOUND)
                assert _recv_pdu(sock)[0] == pdu.A_ASSOCIATE_AC
                pdu_type, body = _recv_pdu(sock)
                assert pdu_type in (pdu.P_DATA_TF, pdu.A_ABORT, 0), pdu_type
                if pdu_type == pdu.P_DATA_TF:
                    [(_, _, response)] = pdu.pdvs(memoryview(body))
                    code = _status(bytes(response))
                    check_status(code, _stored_uid(pieces[2]), rejections)
            sock.shutdown(socket.SHUT_WR)
        except (ConnectionError, BrokenPipeError):
            pass  # the SCP closed first: allowed
        types = _drain(sock)
    assert set(types) <= {
        pdu.A_ASSOCIATE_AC,
        pdu.A_ASSOCIATE_RJ,
        pdu.P_DATA_TF,
        pdu.A_RELEASE_RP,
        pdu.A_ABORT,
    }
    no_failures_logged(caplog)
    echo_succeeds(scp)


def _status(command: bytes) -> int:
    offset, found = 0, {}
    while offset + 8 <= len(command):
        _, element, length = struct.unpack_from("<HHI", command, offset)
        found[element] = command[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return int.from_bytes(found[0x0900], "little")


def _stored_uid(p_data_pdu: bytes) -> str:
    """The SOP Instance UID the ingest reads from the (mutated) data set, as the SCP stored it."""
    [(_, _, fragment)] = pdu.pdvs(memoryview(p_data_pdu)[6:])
    try:
        ds = dcmread(BytesIO(bytes(fragment)), force=True)
        return str(ds.get("SOPInstanceUID", ""))
    except Exception:  # noqa: BLE001
        return ""
