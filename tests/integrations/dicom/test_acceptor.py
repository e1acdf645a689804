"""fhirai's own upper-layer acceptor (integrations.dicom.acceptor) on a real socket: PS3.8 edge
cases driven byte by byte, the same answers and the same stored bytes as the pynetdicom engine,
and dcmtk's storescu/echoscu as senders."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import threading
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]

from fhirai import blobs
from fhirai.ingest.models import Instance, Study
from integrations.dicom import pdu, status
from integrations.dicom.acceptor import Acceptor
from integrations.dicom.scp import application_entity, server_start
from tests.support.product import free_port

pytestmark = pytest.mark.django_db(transaction=True)
DCMTK = pytest.mark.skipif(not shutil.which("storescu") or not shutil.which("echoscu"), reason="needs dcmtk")


@pytest.fixture
def scp(settings, blob_dir):
    settings.FHIRAI_DICOM_ENGINE = "fhirai"
    port = free_port()
    server = server_start(("127.0.0.1", port))
    yield port
    server.shutdown()


# --- a requestor written by hand (PS3.8 9.3) ----------------------------------------------------
def _associate_rq(contexts: list[tuple[int, str, list[str]]], *, roles=(), max_pdu: int = 16384) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "RAWSCU"
    primitive.called_ae_title = "FHIRAI"
    cxs = []
    for context_id, abstract, syntaxes in contexts:
        cx = build_context(abstract, syntaxes)
        cx.context_id = context_id
        cxs.append(cx)
    primitive.presentation_context_definition_list = cxs
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4.5"
    info: list[object] = [length, implementation]
    for uid, scu, scp in roles:
        item = SCP_SCU_RoleSelectionNegotiation()
        item.sop_class_uid, item.scu_role, item.scp_role = uid, scu, scp
        info.append(item)
    primitive.user_information = info
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return rq.encode()


def _recv_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return 0, b""
        header += chunk
    pdu_type, length = struct.unpack(">BxI", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "connection closed inside a PDU"
        body += chunk
    return pdu_type, body


def _connect(port: int, contexts=None, **kwargs) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_associate_rq(contexts or [(1, CTImageStorage, [ExplicitVRLittleEndian])], **kwargs))
    pdu_type, _ = _recv_pdu(sock)
    assert pdu_type == pdu.A_ASSOCIATE_AC
    return sock


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def _p_data(*items: bytes) -> bytes:
    body = b"".join(items)
    return struct.pack(">BxI", pdu.P_DATA_TF, len(body)) + body


def _command(
    field: int, message_id: int, sop_class: str, sop_instance: str = "", with_dataset: bool = True
) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = field
    ds.MessageID = message_id
    if field == pdu.C_STORE_RQ:
        ds.Priority = 0
    ds.CommandDataSetType = 0x0001 if with_dataset else pdu.NO_DATASET
    if sop_instance:
        ds.AffectedSOPInstanceUID = sop_instance
    rest = encode(ds, True, True)
    assert rest is not None
    return struct.pack("<HHI", 0, 0, 4) + len(rest).to_bytes(4, "little") + rest


def _dataset_bytes(raw_part10: bytes, syntax: str = ExplicitVRLittleEndian) -> tuple[Dataset, bytes]:
    """A phantom slice re-encoded in `syntax`, without file meta: what an SCU sends."""
    ds = dcmread(BytesIO(raw_part10))
    data = encode(ds, syntax == ImplicitVRLittleEndian, True)
    assert data is not None
    return ds, data


def _status_of(body: bytes) -> int:
    [(_, control, data)] = pdu.pdvs(memoryview(body))
    assert control == 0x03
    elements = {}
    offset = 0
    data = bytes(data)
    while offset < len(data):
        _, element, length = struct.unpack_from("<HHI", data, offset)
        elements[element] = data[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return int.from_bytes(elements[0x0900], "little")


def _store_fragmented(
    sock: socket.socket, ds: Dataset, data: bytes, *, fragment: int, message_id: int = 1
) -> int:
    command = _command(pdu.C_STORE_RQ, message_id, ds.SOPClassUID, ds.SOPInstanceUID)
    half = len(command) // 2
    # the command in two PDUs, then the data set in fragments of `fragment` bytes, two per PDU
    sock.sendall(_p_data(_pdv(1, 0x01, command[:half])))
    sock.sendall(_p_data(_pdv(1, 0x03, command[half:])))
    pieces = [data[i : i + fragment] for i in range(0, len(data), fragment)]
    for n in range(0, len(pieces), 2):
        items = []
        for m, piece in enumerate(pieces[n : n + 2]):
            last = n + m == len(pieces) - 1
            items.append(_pdv(1, 0x02 if last else 0x00, piece))
        sock.sendall(_p_data(*items))
    pdu_type, body = _recv_pdu(sock)
    assert pdu_type == pdu.P_DATA_TF
    return _status_of(body)


def _release(sock: socket.socket) -> None:
    sock.sendall(struct.pack(">BxI", pdu.A_RELEASE_RQ, 4) + b"\x00" * 4)
    assert _recv_pdu(sock) == (pdu.A_RELEASE_RP, b"\x00" * 4)
    sock.close()


# --- tests ------------------------------------------------------------------------------------------
def test_part10_prefix_is_byte_identical_to_pynetdicoms_file_meta():
    for sop_class, instance, syntax in [
        (CTImageStorage, "1.2.3.4", ExplicitVRLittleEndian),
        (MRImageStorage, "1.2.826.0.1.3680043.8.498.123456789", ImplicitVRLittleEndian),
        ("1.2.3", "1.22.333.4444.55555", "1.2.840.10008.1.2.4.50"),
    ]:
        meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=instance, transfer_syntax=syntax)
        expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
        assert pdu.part10_prefix(sop_class, instance, syntax) == expected


def test_responses_are_byte_identical_to_pynetdicoms():
    from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP
    from pynetdicom.dimse_primitives import C_ECHO, C_STORE

    def theirs(message_class, primitive) -> bytes:
        message = message_class()
        message.primitive_to_message(primitive)
        return encode(message.command_set, True, True)

    store = C_STORE()
    store.MessageIDBeingRespondedTo = 7
    store.AffectedSOPClassUID, store.AffectedSOPInstanceUID = CTImageStorage, "1.2.3.4.5"
    store.Status, store.ErrorComment = status.OUT_OF_RESOURCES, "temporarily unable to store; retry later"
    request = pdu.Command(
        field=pdu.C_STORE_RQ,
        message_id=7,
        dataset_type=1,
        sop_class_uid=CTImageStorage,
        sop_instance_uid="1.2.3.4.5",
    )
    ours = pdu.response_encode(request, status.OUT_OF_RESOURCES, error_comment=store.ErrorComment)
    assert ours == theirs(C_STORE_RSP, store)
    store.Status, store.ErrorComment = status.SUCCESS, None
    assert pdu.response_encode(request, status.SUCCESS) == theirs(C_STORE_RSP, store)
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo, echo.AffectedSOPClassUID, echo.Status = 3, Verification, status.SUCCESS
    request = pdu.Command(
        field=pdu.C_ECHO_RQ,
        message_id=3,
        dataset_type=pdu.NO_DATASET,
        sop_class_uid=Verification,
        sop_instance_uid="",
    )
    assert pdu.response_encode(request, status.SUCCESS, with_instance=False) == theirs(C_ECHO_RSP, echo)


def test_command_fragmented_across_pdus_and_several_pdvs_per_pdu_are_reassembled(scp, phantom):
    ds, data = _dataset_bytes(phantom.files[0])
    sock = _connect(scp)
    assert _store_fragmented(sock, ds, data, fragment=1000) == status.SUCCESS
    _release(sock)
    instance = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
    stored = blobs.get(instance.blob_key)
    assert stored == pdu.part10_prefix(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian) + data


def test_stored_bytes_are_the_same_on_both_engines(settings, blob_dir, phantom):
    stored = {}
    for engine in ("fhirai", "pynetdicom"):
        settings.FHIRAI_DICOM_ENGINE = engine
        port = free_port()
        server = server_start(("127.0.0.1", port))
        try:
            scu = AE(ae_title="TESTSCU")
            scu.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
            assoc = scu.associate("127.0.0.1", port, ae_title="FHIRAI")
            assert assoc.send_c_store(dcmread(BytesIO(phantom.files[1]))).Status == status.SUCCESS
            assoc.release()
        finally:
            server.shutdown()
        stored[engine] = blobs.get(Instance.objects.get().blob_key)
        Study.objects.all().delete()
        shutil.rmtree(blob_dir)
    assert stored["fhirai"] == stored["pynetdicom"]


def test_association_answers_are_the_same_as_pynetdicoms(settings):
    """The same A-ASSOCIATE-RQ (an accepted class in two syntaxes, a class not supported, role
    selection) gets byte-identical A-ASSOCIATE-AC from both engines."""
    request = _associate_rq(
        [
            (1, CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]),
            (3, "1.2.840.10008.5.1.4.1.2.2.1", [ImplicitVRLittleEndian]),  # Q/R FIND: not served
            (5, Verification, [ImplicitVRLittleEndian]),
            (7, MRImageStorage, [ExplicitVRLittleEndian]),
        ],
        roles=[(CTImageStorage, True, False), (MRImageStorage, False, True)],
    )
    answers = {}
    for engine in ("fhirai", "pynetdicom"):
        settings.FHIRAI_DICOM_ENGINE = engine
        port = free_port()
        server = server_start(("127.0.0.1", port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request)
                answers[engine] = _recv_pdu(sock)
                sock.sendall(struct.pack(">BxI", pdu.A_RELEASE_RQ, 4) + b"\x00" * 4)
                assert _recv_pdu(sock)[0] == pdu.A_RELEASE_RP
        finally:
            server.shutdown()
    assert answers["fhirai"][0] == pdu.A_ASSOCIATE_AC
    assert answers["fhirai"] == answers["pynetdicom"]


def test_a_abort_mid_dataset_leaves_nothing_stored(scp, phantom, blob_dir):
    ds, data = _dataset_bytes(phantom.files[0])
    sock = _connect(scp)
    sock.sendall(_p_data(_pdv(1, 0x03, _command(pdu.C_STORE_RQ, 1, ds.SOPClassUID, ds.SOPInstanceUID))))
    sock.sendall(_p_data(_pdv(1, 0x00, data[:4000])))
    sock.sendall(struct.pack(">BxI", pdu.A_ABORT, 4) + b"\x00\x00\x00\x00")
    assert _recv_pdu(sock) == (0, b"")  # nothing answered, connection closed
    sock.close()
    # the acceptor still serves, and nothing of the aborted instance was kept
    sock = _connect(scp, [(1, Verification, [ImplicitVRLittleEndian])])
    sock.sendall(_p_data(_pdv(1, 0x03, _command(pdu.C_ECHO_RQ, 1, Verification, with_dataset=False))))
    pdu_type, body = _recv_pdu(sock)
    assert pdu_type == pdu.P_DATA_TF and _status_of(body) == status.SUCCESS
    _release(sock)
    assert not Instance.objects.exists() and not Study.objects.exists()
    assert not blob_dir.exists() or not any(p.is_file() for p in blob_dir.rglob("*"))


@pytest.mark.parametrize(
    ("pdu_bytes", "reason"),
    [
        # an A-ASSOCIATE-AC from the requestor in the Data Transfer state: unexpected PDU
        (struct.pack(">BxI", pdu.A_ASSOCIATE_AC, 4) + b"\x00" * 4, pdu.ABORT_REASON_UNEXPECTED_PDU),
        # a PDU type PS3.8 does not define: unrecognized PDU
        (struct.pack(">BxI", 0x09, 4) + b"\x00" * 4, pdu.ABORT_REASON_UNRECOGNIZED_PDU),
        # a P-DATA-TF longer than the Maximum Length we announced: invalid parameter
        (struct.pack(">BxI", pdu.P_DATA_TF, 300 * 1024 * 1024), pdu.ABORT_REASON_INVALID_PARAMETER),
        # a PDV on a presentation context that was never accepted
        (_p_data(_pdv(9, 0x03, b"\x00" * 8)), pdu.ABORT_REASON_INVALID_PARAMETER),
    ],
)
def test_protocol_errors_are_answered_with_a_provider_a_abort(scp, pdu_bytes, reason):
    sock = _connect(scp)
    sock.sendall(pdu_bytes)
    pdu_type, body = _recv_pdu(sock)
    assert pdu_type == pdu.A_ABORT and body == bytes((0, 0, pdu.ABORT_SOURCE_PROVIDER, reason))
    assert _recv_pdu(sock) == (0, b"")
    sock.close()


def test_c_echo_and_release_with_a_hand_written_requestor(scp):
    sock = _connect(scp, [(1, Verification, [ImplicitVRLittleEndian])])
    sock.sendall(_p_data(_pdv(1, 0x03, _command(pdu.C_ECHO_RQ, 7, Verification, with_dataset=False))))
    pdu_type, body = _recv_pdu(sock)
    assert pdu_type == pdu.P_DATA_TF and _status_of(body) == status.SUCCESS
    _release(sock)


def test_an_unknown_sop_class_in_the_command_is_stored(scp, phantom):
    """As on the pynetdicom engine (integrations.dicom.scp's service-class patch) and storescp."""
    ds, data = _dataset_bytes(phantom.files[2])
    sock = _connect(scp)
    command = _command(pdu.C_STORE_RQ, 1, "1.2.3.4.5.6", ds.SOPInstanceUID)
    sock.sendall(_p_data(_pdv(1, 0x03, command), _pdv(1, 0x02, data)))
    pdu_type, body = _recv_pdu(sock)
    assert pdu_type == pdu.P_DATA_TF and _status_of(body) == status.SUCCESS
    _release(sock)
    assert Instance.objects.filter(sop_instance_uid=ds.SOPInstanceUID).exists()


def test_associations_over_the_limit_are_rejected_transient_local_limit(scp, settings):
    settings.FHIRAI_DICOM_MAX_ASSOCIATIONS = 1
    # the limit is read when the acceptor starts: start one with it
    port = free_port()
    server = server_start(("127.0.0.1", port))
    try:
        first = _connect(port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
            second.sendall(_associate_rq([(1, CTImageStorage, [ExplicitVRLittleEndian])]))
            pdu_type, body = _recv_pdu(second)
        assert pdu_type == pdu.A_ASSOCIATE_RJ and body[1:4] == bytes((0x02, 0x03, 0x02))
        _release(first)
    finally:
        server.shutdown()


def test_a_silent_connection_is_closed_after_the_artim_timeout(settings):
    ae = application_entity()
    ae.acse_timeout = 0.3
    acceptor = Acceptor(
        ("127.0.0.1", 0), ae, store=lambda *a: (0, ""), rejected=lambda *a: None, check=lambda *a: None
    )
    threading.Thread(target=acceptor.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(acceptor.server_address, timeout=5) as sock:
            started = time.monotonic()
            assert sock.recv(10) == b""
            assert time.monotonic() - started < 4
    finally:
        acceptor.shutdown()


@DCMTK
def test_storescu_and_echoscu_as_senders(scp, phantom, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for n, raw in enumerate(phantom.files[:5]):
        (folder / f"{n}.dcm").write_bytes(raw)
    env = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}
    echo = subprocess.run(
        ["echoscu", "-aec", "FHIRAI", "127.0.0.1", str(scp)], env=env, capture_output=True, timeout=60
    )
    assert echo.returncode == 0, echo.stderr
    sent = subprocess.run(
        ["storescu", "-aet", "CT_ROOM_1", "-aec", "FHIRAI", "+sd", "127.0.0.1", str(scp), str(folder)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert Instance.objects.count() == 5 and Study.objects.get().calling_ae == "CT_ROOM_1"
    for path in sorted(folder.iterdir()):
        original = dcmread(path)
        stored = blobs.get(Instance.objects.get(sop_instance_uid=original.SOPInstanceUID).blob_key)
        # the data set as sent, behind pynetdicom-style file meta
        assert stored.endswith(Path(path).read_bytes()[-1000:])


def test_role_selection_is_answered(scp):
    scu = AE(ae_title="TESTSCU")
    scu.add_requested_context(CTImageStorage)
    role = build_role(CTImageStorage, scu_role=True, scp_role=True)
    assoc = scu.associate("127.0.0.1", scp, ae_title="FHIRAI", ext_neg=[role])
    assert assoc.is_established
    [cx] = assoc.accepted_contexts
    # PS3.7 D.3.3.4: we accept the SCU role for the requestor (we are the storage SCP) only
    assert cx.as_scu is True
    assoc.release()


def test_shutdown_closes_idle_associations_at_once(settings, blob_dir):
    settings.FHIRAI_DICOM_ENGINE = "fhirai"
    port = free_port()
    server = server_start(("127.0.0.1", port))
    sock = _connect(port)  # established, between messages
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)  # not even an A-ASSOCIATE-RQ
    time.sleep(0.5)  # accepted (one still in the listen backlog would be reset by the close)
    started = time.monotonic()
    server.shutdown()
    assert time.monotonic() - started < 5
    assert _recv_pdu(sock) == (0, b"") and silent.recv(10) == b""
    sock.close()
    silent.close()
