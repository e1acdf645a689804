"""The MLLP listener on a real socket, driven by a third-party client (the PyPI `hl7` package's
MLLPClient) and by raw sockets for the broken-frame cases."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import hl7.client
import pytest

from fhirai.ingest.models import Message, Rejection
from integrations.hl7.management.commands.mllp import serve
from tests.support.certs import certs_make
from tests.support.hl7msg import adt, message, msh, orm, oru
from tests.support.product import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def running_listener() -> Iterator[int]:
    """Runs the listener (its own event loop, in a thread) on a free port, with the settings in force."""
    port = free_port()
    holder: dict[str, object] = {}

    async def main() -> None:
        holder["stop"] = asyncio.Event()
        holder["loop"] = asyncio.get_running_loop()
        await serve(holder["stop"], port=port)  # type: ignore[arg-type]

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while "loop" not in holder and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    try:
        yield port
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)  # type: ignore[attr-defined]
        thread.join(15)


@pytest.fixture
def listener(settings):
    with running_listener() as port:
        yield port


def _segments(reply: bytes) -> dict[str, list[str]]:
    text = reply.strip(b"\x0b\x1c\x0d").decode()
    return {seg[:3]: seg.split("|") for seg in text.split("\r") if seg}


def _send(port: int, raw: bytes) -> dict[str, list[str]]:
    with hl7.client.MLLPClient("127.0.0.1", port) as client:
        return _segments(client.send_message(raw))


def _raw_send(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        buf = b""
        while not buf.endswith(b"\x1c\x0d"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


def test_adt_orm_oru_are_acknowledged_after_commit_with_msa2_echoing_msh10(listener):
    with hl7.client.MLLPClient("127.0.0.1", listener) as client:
        for raw, control in ((adt("ADT-1"), "ADT-1"), (orm("ORM-1"), "ORM-1"), (oru("ORU-1"), "ORU-1")):
            reply = _segments(client.send_message(raw))
            assert reply["MSA"][1:3] == ["AA", control]
            assert "ERR" not in reply
            # The ACK has arrived: the message must already be committed.
            assert Message.objects.filter(control_id=control, sender="RIS^HOSP").exists()
    assert Message.objects.count() == 3


def test_a_resend_is_acknowledged_again_and_stored_once(listener):
    first = _send(listener, adt("DUP-1"))
    again = _send(listener, adt("DUP-1"))
    assert first["MSA"][1:3] == again["MSA"][1:3] == ["AA", "DUP-1"]
    assert Message.objects.filter(control_id="DUP-1").count() == 1


def test_enhanced_mode_gets_a_commit_accept(listener):
    raw = message(msh("ENH-1", "ADT^A04^ADT_A01", extra="|||AL|AL"), "EVN|A04", "PID|1||MRN-1^^^HOSP^MR")
    reply = _send(listener, raw)
    assert reply["MSA"][1:3] == ["CA", "ENH-1"]
    assert Message.objects.get(control_id="ENH-1").enhanced


def test_enhanced_mode_accept_on_error_only_sends_nothing_on_success(listener):
    raw = message(msh("ENH-2", "ADT^A04^ADT_A01", extra="|||ER|AL"), "EVN|A04", "PID|1||MRN-1^^^HOSP^MR")
    with socket.create_connection(("127.0.0.1", listener), timeout=1.5) as sock:
        sock.sendall(b"\x0b" + raw + b"\x1c\x0d")
        with pytest.raises(TimeoutError):
            sock.recv(100)
    assert Message.objects.filter(control_id="ENH-2").exists()


MALFORMED = [
    ("no MSH", b"HELLO THIS IS NOT HL7\r", "AR", "100"),
    ("bad delimiters", b"MSH|^^\\&|RIS|HOSP|FHIRAI|HOSP|2026||ADT^A01|B1|P|2.5.1\r", "AR", "102"),
    ("unknown type", message(msh("U1", "SIU^S12"), "PID|1||X"), "AR", "200"),
    ("unknown event", message(msh("U2", "ADT^A99"), "PID|1||X"), "AR", "201"),
    ("unsupported version", message(msh("U3", "ADT^A01", "2.1"), "PID|1||X"), "AR", "203"),
    ("missing PID", message(msh("U4", "ORM^O01"), "ORC|NW|1", "OBR|1|1"), "AE", "100"),
    (
        "wrong encoding",
        message(
            msh("U5", "ADT^A01", extra="||||||UNICODE UTF-8"),
            "PID|1||\xe9".encode("latin-1").decode("latin-1"),
        ).replace(b"\xc3\xa9", b"\xe9"),
        "AE",
        "102",
    ),
    ("empty control id", message(msh("", "ADT^A01"), "PID|1||X"), "AE", "101"),
]


@pytest.mark.parametrize(("name", "raw", "code", "condition"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_gets_the_right_nak_is_kept_and_the_listener_stays_up(
    listener, name, raw, code, condition
):
    reply = _segments(_raw_send(listener, b"\x0b" + raw + b"\x1c\x0d"))
    assert reply["MSA"][1] == code, name
    assert reply["ERR"][3].startswith(condition) or reply["ERR"][1].split("^")[-1].startswith(condition)
    assert Rejection.objects.filter(protocol="hl7").count() == 1
    assert _send(listener, adt("AFTER-1"))["MSA"][1] == "AA"


def test_truncated_and_oversize_frames_get_ar_and_the_next_frame_is_served(listener, settings):
    truncated = b"\x0b" + adt("T1")[:40] + b"\x0b" + adt("T2") + b"\x1c\x0d"
    with socket.create_connection(("127.0.0.1", listener), timeout=5) as sock:
        sock.sendall(truncated)
        buf = b""
        while buf.count(b"\x1c\x0d") < 2:
            buf += sock.recv(65536)
    first, second = (_segments(part + b"\x1c\x0d") for part in buf.split(b"\x1c\x0d")[:2])
    assert first["MSA"][1] == "AR" and second["MSA"][1:3] == ["AA", "T2"]


def test_oversize_message_is_refused(settings):
    settings.FHIRAI_MLLP_MAX_BYTES = 2048
    with running_listener() as port:
        big = message(msh("BIG-1", "ORU^R01"), "PID|1||X", "OBR|1", "OBX|1|TX|T||" + "x" * 5000)
        reply = _segments(_raw_send(port, b"\x0b" + big + b"\x1c\x0d"))
        assert reply["MSA"][1:3] == ["AR", "BIG-1"]
        assert not Message.objects.exists()


def test_connections_from_outside_the_allow_list_are_closed_unanswered(settings):
    settings.FHIRAI_MLLP_ALLOW = ["10.0.0.0/8"]
    with running_listener() as port:
        try:
            reply = _raw_send(port, b"\x0b" + adt("NO-1") + b"\x1c\x0d")
        except ConnectionResetError:
            reply = b""
        assert reply == b""
        assert not Message.objects.exists()


def test_many_concurrent_connections_each_get_their_own_acks(listener):
    results: dict[str, str] = {}

    def sender(n: int) -> None:
        with hl7.client.MLLPClient("127.0.0.1", listener) as client:
            for i in range(5):
                control = f"CC-{n}-{i}"
                results[control] = _segments(client.send_message(adt(control)))["MSA"][2]

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 120 and all(k == v for k, v in results.items())
    assert Message.objects.count() == 120


def test_tls(settings, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    settings.FHIRAI_MLLP_TLS_CERT, settings.FHIRAI_MLLP_TLS_KEY = str(cert), str(key)
    with running_listener() as port:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw_sock:
            with context.wrap_socket(raw_sock) as sock:
                sock.sendall(b"\x0b" + adt("TLS-1") + b"\x1c\x0d")
                buf = b""
                while not buf.endswith(b"\x1c\x0d"):
                    buf += sock.recv(65536)
        assert _segments(buf)["MSA"][1:3] == ["AA", "TLS-1"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")  # offering TLS 1.1 is the point
def test_mutual_tls_with_the_bcp_195_profile(settings, tmp_path):
    """With FHIRAI_MLLP_TLS_CA, a sender needs a certificate from that CA; TLS 1.1 and a CBC suite
    are refused (fhirai.tls); a sender with the right certificate gets its ACK."""
    certs = certs_make(tmp_path / "certs")
    settings.FHIRAI_MLLP_TLS_CERT, settings.FHIRAI_MLLP_TLS_KEY = (
        str(certs.server_cert),
        str(certs.server_key),
    )
    settings.FHIRAI_MLLP_TLS_CA = str(certs.ca)

    def client(
        *, cert: bool = True, maximum: ssl.TLSVersion | None = None, ciphers: str = ""
    ) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(certs.ca))
        if cert:
            context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        if maximum is not None:
            context.minimum_version, context.maximum_version = ssl.TLSVersion.TLSv1, maximum
        if ciphers:
            context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
        return context

    def exchange(context: ssl.SSLContext, control_id: str) -> bytes | None:
        """The reply, or None when the connection is refused (TLS 1.3 tells a client without a
        certificate after its handshake: its first read then fails or finds the connection closed)."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw_sock:
                with context.wrap_socket(raw_sock, server_hostname="localhost") as sock:
                    sock.sendall(b"\x0b" + adt(control_id) + b"\x1c\x0d")
                    buf = b""
                    while not buf.endswith(b"\x1c\x0d"):
                        chunk = sock.recv(65536)
                        if not chunk:
                            return None
                        buf += chunk
                    return buf
        except (ssl.SSLError, ConnectionError):
            return None

    with running_listener() as port:
        assert exchange(client(cert=False), "NO-TLS") is None
        assert exchange(client(maximum=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT"), "NO-TLS") is None
        assert (
            exchange(client(maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-SHA256"), "NO-TLS")
            is None
        )
        reply = exchange(client(), "TLS-2")
        assert reply is not None and _segments(reply)["MSA"][1:3] == ["AA", "TLS-2"]
    assert not Message.objects.filter(control_id="NO-TLS").exists()


def test_a_network_allowed_in_the_console_is_let_in_and_refusals_are_kept(settings):
    from fhirai.ingest.models import Rejection
    from fhirai.ingest.sources import source_rule_add

    settings.FHIRAI_MLLP_ALLOW = ["10.0.0.0/8"]
    with running_listener() as port:
        try:
            _raw_send(port, b"\x0b" + adt("NO-2") + b"\x1c\x0d")
        except ConnectionResetError:
            pass
        source_rule_add("mllp-network", "127.0.0.0/8", actor="test")
        reply = _segments(_raw_send(port, b"\x0b" + adt("YES-1") + b"\x1c\x0d"))
        assert reply["MSA"][1:3] == ["AA", "YES-1"]
    assert Rejection.objects.get().code == "sender-not-allowed"
