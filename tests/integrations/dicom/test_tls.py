"""DICOM over TLS (PS3.15 B.9/B.10, the fhirai.tls profile) on real sockets, on both SCP engines:
dcmtk's echoscu/storescu and a pynetdicom SCU with certificates made here by the openssl CLI; a
plain client, a client without a certificate or with one from another CA, TLS 1.1 and weak ciphers
are refused, and the SCP keeps serving. Then fhirai as the TLS client (FHIRAI_PACS_TLS): results
by C-STORE to a PACS that requires TLS, and the priors C-FIND."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import time
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from fhirai.errors import Unavailable
from fhirai.ingest.models import Instance, Study
from fhirai.tls import server_context
from integrations.dicom import status
from integrations.dicom.acceptor import tls_accept
from integrations.dicom.conformance import conformance_statement
from integrations.dicom.qr import PacsPriors
from integrations.dicom.scp import server_start, servers_start, tls_context
from integrations.dicom.scu import echo, objects_send
from tests.support.certs import certs_make
from tests.support.product import free_port

pytestmark = pytest.mark.django_db(transaction=True)
DCMTK = pytest.mark.skipif(not shutil.which("storescu") or not shutil.which("echoscu"), reason="needs dcmtk")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return certs_make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(params=["fhirai", "pynetdicom"])
def tls_scp(request, settings, certs, blob_dir):
    """The SCP over TLS on each engine, with mutual TLS (FHIRAI_DICOM_TLS_CA set)."""
    settings.FHIRAI_DICOM_ENGINE = request.param
    settings.FHIRAI_DICOM_TLS_CERT = str(certs.server_cert)
    settings.FHIRAI_DICOM_TLS_KEY = str(certs.server_key)
    settings.FHIRAI_DICOM_TLS_CA = str(certs.ca)
    port = free_port()
    server = server_start(("127.0.0.1", port), ssl_context=tls_context())
    yield port
    server.shutdown()


def _client(certs, *, cert: bool = True, other_ca: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert:
        if other_ca:
            context.load_cert_chain(str(certs.other_client_cert), str(certs.other_client_key))
        else:
            context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def _associate(port: int, context: ssl.SSLContext | None, *abstract: object):
    scu = AE(ae_title="TLSSCU")
    scu.acse_timeout = scu.network_timeout = 10
    for a in abstract or (Verification,):
        scu.add_requested_context(a)
    tls_args = (context, "localhost") if context is not None else None
    return scu.associate("127.0.0.1", port, ae_title="FHIRAI", tls_args=tls_args)


def _echo_ok(port: int, context: ssl.SSLContext | None) -> bool:
    assoc = _associate(port, context)
    if not assoc.is_established:
        return False
    try:
        return assoc.send_c_echo().Status == status.SUCCESS
    finally:
        assoc.release()


def _logged(caplog, text: str, timeout: float = 10.0) -> bool:
    """The server logs from its own threads: wait for the line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in caplog.text:
            return True
        time.sleep(0.05)
    return False


def test_pynetdicom_scu_echoes_and_stores_over_tls(tls_scp, certs, phantom):
    assoc = _associate(tls_scp, _client(certs), Verification, CTImageStorage)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == status.SUCCESS
    for raw in phantom.files[:3]:
        assert assoc.send_c_store(dcmread(BytesIO(raw))).Status == status.SUCCESS
    assoc.release()
    assert Instance.objects.count() == 3 and Study.objects.get().calling_ae == "TLSSCU"


@DCMTK
def test_dcmtk_echoscu_and_storescu_over_tls(tls_scp, certs, phantom, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for n, raw in enumerate(phantom.files[:4]):
        (folder / f"{n}.dcm").write_bytes(raw)
    env = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}
    # +tls KEY CERT: authenticated TLS with this client key and certificate; +cf: the CA the
    # server's certificate must chain to; +py: the Non-downgrading BCP 195 TLS Profile (dcmtk's
    # default, named here so a change of default cannot weaken the test); -pw: the key has no password.
    tls = ["+tls", str(certs.client_key), str(certs.client_cert), "-pw", "+cf", str(certs.ca), "+py"]
    echo = subprocess.run(
        ["echoscu", *tls, "-aec", "FHIRAI", "127.0.0.1", str(tls_scp)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert echo.returncode == 0, echo.stderr
    sent = subprocess.run(
        [
            "storescu",
            *tls,
            "-aet",
            "CT_ROOM_1",
            "-aec",
            "FHIRAI",
            "+sd",
            "127.0.0.1",
            str(tls_scp),
            str(folder),
        ],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert Instance.objects.count() == 4 and Study.objects.get().calling_ae == "CT_ROOM_1"


@DCMTK
def test_dcmtk_without_tls_is_refused(tls_scp):
    echo = subprocess.run(
        ["echoscu", "-aec", "FHIRAI", "127.0.0.1", str(tls_scp)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
    )
    assert echo.returncode != 0


def test_a_plain_client_is_refused_and_the_scp_keeps_serving(tls_scp, certs, caplog):
    caplog.set_level(logging.INFO)
    assert not _echo_ok(tls_scp, None)
    assert _logged(caplog, "DICOM TLS handshake from 127.0.0.1")
    assert _echo_ok(tls_scp, _client(certs))


def test_mutual_tls_refuses_a_client_without_a_certificate_or_from_another_ca(tls_scp, certs, caplog):
    caplog.set_level(logging.INFO)
    assert not _echo_ok(tls_scp, _client(certs, cert=False))
    assert not _echo_ok(tls_scp, _client(certs, other_ca=True))
    assert _logged(caplog, "CERTIFICATE_VERIFY_FAILED")
    assert "otherclient" not in caplog.text  # the certificate's subject is not logged
    assert _echo_ok(tls_scp, _client(certs))


def _raw_handshake(port: int, context: ssl.SSLContext) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost"):
            pass


def _weak_client(certs, *, version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    # SECLEVEL=0 lets this client offer what the local OpenSSL policy would not: the refusal must
    # come from the server.
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = version
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")  # offering TLS 1.0/1.1 is the point
@pytest.mark.parametrize(
    ("version", "ciphers", "reason"),
    [
        (ssl.TLSVersion.TLSv1_1, "DEFAULT", "UNSUPPORTED_PROTOCOL"),
        (ssl.TLSVersion.TLSv1_2, "AES128-SHA", "NO_SHARED_CIPHER"),  # RSA key exchange, CBC
        (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA256", "NO_SHARED_CIPHER"),  # ECDHE, but CBC
        (ssl.TLSVersion.TLSv1_2, "DHE-RSA-AES128-GCM-SHA256", "NO_SHARED_CIPHER"),  # finite-field DHE
    ],
)
def test_old_tls_and_weak_ciphers_are_refused(tls_scp, certs, caplog, version, ciphers, reason):
    caplog.set_level(logging.INFO)
    with pytest.raises(ssl.SSLError):
        _raw_handshake(tls_scp, _weak_client(certs, version=version, ciphers=ciphers))
    assert _logged(caplog, reason)
    assert _echo_ok(tls_scp, _client(certs))


def test_tls_1_2_with_an_aead_ecdhe_cipher_is_accepted(tls_scp, certs):
    context = _client(certs)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", tls_scp), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.2"
            assert tls.cipher()[0].startswith("ECDHE-RSA-") and "GCM" in tls.cipher()[0]


def test_a_silent_connection_does_not_hold_up_other_senders(tls_scp, certs):
    with socket.create_connection(("127.0.0.1", tls_scp), timeout=10):
        assert _echo_ok(tls_scp, _client(certs))  # while the first never starts its handshake


def test_a_handshake_that_never_completes_is_closed_after_the_timeout(certs, caplog):
    caplog.set_level(logging.INFO)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname(), timeout=10):
            conn, address = listener.accept()
            assert tls_accept(conn, context, address, 0.3) is None
    assert "no handshake within the timeout" in caplog.text


@pytest.mark.parametrize("engine", ["fhirai", "pynetdicom"])
def test_tls_port_beside_the_plain_one(settings, certs, blob_dir, engine):
    settings.FHIRAI_DICOM_ENGINE = engine
    settings.FHIRAI_BIND_ADDRESS = "127.0.0.1"
    settings.FHIRAI_DICOM_PORT, settings.FHIRAI_DICOM_TLS_PORT = free_port(), free_port()
    settings.FHIRAI_DICOM_TLS_CERT, settings.FHIRAI_DICOM_TLS_KEY = (
        str(certs.server_cert),
        str(certs.server_key),
    )
    settings.FHIRAI_DICOM_TLS_CA = ""  # server authentication only: a client certificate is not asked for
    servers = servers_start()
    try:
        assert len(servers) == 2
        assert _echo_ok(settings.FHIRAI_DICOM_PORT, None)
        assert _echo_ok(settings.FHIRAI_DICOM_TLS_PORT, _client(certs, cert=False))
        assert not _echo_ok(settings.FHIRAI_DICOM_TLS_PORT, None)
    finally:
        for server in servers:
            server.shutdown()


def test_with_a_certificate_and_no_tls_port_the_dicom_port_speaks_tls_only(settings, certs, blob_dir):
    settings.FHIRAI_BIND_ADDRESS = "127.0.0.1"
    settings.FHIRAI_DICOM_PORT, settings.FHIRAI_DICOM_TLS_PORT = free_port(), 0
    settings.FHIRAI_DICOM_TLS_CERT, settings.FHIRAI_DICOM_TLS_KEY = (
        str(certs.server_cert),
        str(certs.server_key),
    )
    settings.FHIRAI_DICOM_TLS_CA = str(certs.ca)
    servers = servers_start()
    try:
        assert len(servers) == 1
        assert not _echo_ok(settings.FHIRAI_DICOM_PORT, None)
        assert _echo_ok(settings.FHIRAI_DICOM_PORT, _client(certs))
    finally:
        for server in servers:
            server.shutdown()


# --- fhirai as the TLS client: results to a PACS, priors from a PACS -------------------------------
def _pacs_tls(settings, certs, *, listed: list[str], client_cert: bool = True) -> None:
    settings.FHIRAI_PACS_TLS = listed
    settings.FHIRAI_PACS_TLS_CA = str(certs.ca)
    settings.FHIRAI_PACS_TLS_CERT = str(certs.client_cert) if client_cert else ""
    settings.FHIRAI_PACS_TLS_KEY = str(certs.client_key) if client_cert else ""


def test_results_are_sent_to_a_pacs_over_tls(tls_scp, settings, certs, phantom):
    _pacs_tls(settings, certs, listed=["pacs"])
    assert "over TLS" in echo("dicom:pacs", "FHIRAI", "127.0.0.1", tls_scp)
    outcome = objects_send("pacs", "FHIRAI", "127.0.0.1", tls_scp, list(phantom.files[:2]))
    assert outcome.delivered, outcome.reply
    assert Instance.objects.count() == 2


def test_a_pacs_listed_by_host_and_port_is_reached_over_tls(tls_scp, settings, certs):
    _pacs_tls(settings, certs, listed=[f"127.0.0.1:{tls_scp}"])
    assert "over TLS" in echo("other", "FHIRAI", "127.0.0.1", tls_scp)


def test_a_tls_pacs_not_listed_or_without_fhirais_certificate_is_unavailable(
    tls_scp, settings, certs, phantom
):
    _pacs_tls(settings, certs, listed=["another"])
    with pytest.raises(Unavailable):
        objects_send("pacs", "FHIRAI", "127.0.0.1", tls_scp, list(phantom.files[:1]))
    _pacs_tls(settings, certs, listed=["*"], client_cert=False)  # the SCP requires a client certificate
    with pytest.raises(Unavailable):
        objects_send("pacs", "FHIRAI", "127.0.0.1", tls_scp, list(phantom.files[:1]))
    assert Instance.objects.count() == 0


def test_a_pacs_whose_certificate_is_not_from_the_ca_is_unavailable(tls_scp, settings, certs):
    _pacs_tls(settings, certs, listed=["*"])
    settings.FHIRAI_PACS_TLS_CA = str(certs.other_ca)
    with pytest.raises(Unavailable):
        echo("pacs", "FHIRAI", "127.0.0.1", tls_scp)


def test_priors_are_queried_over_tls(settings, certs):
    """A Q/R SCP (pynetdicom) that speaks TLS only and answers one study with one series."""

    def on_find(event):
        query = event.identifier
        answer = Dataset()
        answer.QueryRetrieveLevel = query.QueryRetrieveLevel
        answer.PatientID, answer.StudyInstanceUID = "P-TLS", "1.2.3.4"
        if query.QueryRetrieveLevel == "STUDY":
            answer.StudyDate, answer.ModalitiesInStudy = "20250101", "CT"
        else:
            answer.SeriesInstanceUID, answer.Modality, answer.BodyPartExamined = "1.2.3.4.1", "CT", "CHEST"
        yield 0xFF00, answer

    qr = AE(ae_title="QRSCP")
    qr.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = qr.start_server(
        ("127.0.0.1", port),
        block=False,
        ssl_context=server_context(str(certs.server_cert), str(certs.server_key), str(certs.ca)),
        evt_handlers=[(evt.EVT_C_FIND, on_find)],
    )
    try:
        _pacs_tls(settings, certs, listed=["priors-pacs"])
        settings.FHIRAI_PRIORS_PACS = "priors-pacs"
        found = PacsPriors("QRSCP", "127.0.0.1", port).studies_find(
            patient_id="P-TLS", issuer="", earliest="20200101", latest="20261231", modalities=["CT"]
        )
    finally:
        server.shutdown()
    assert [(c.study_uid, c.body_parts) for c in found] == [("1.2.3.4", ("CHEST",))]


def test_the_conformance_statement_says_where_tls_is_served(settings, certs):
    settings.FHIRAI_DICOM_TLS_CERT, settings.FHIRAI_DICOM_TLS_PORT = str(certs.server_cert), 2762
    settings.FHIRAI_DICOM_TLS_CA = str(certs.ca)
    text = conformance_statement()
    assert "TLS (5.1) on port 2762 (FHIRAI_DICOM_TLS_PORT)" in text
    assert "Client certificates: required" in text
    assert (
        "| B.10 Non-downgrading BCP 195 TLS Secure Transport Connection Profile | Yes (SCP and SCU) |" in text
    )
