"""The audit trail forwarded to a syslog collector (IHE ATNA's transport) on real sockets: TCP with
RFC 6587 octet counting, TLS (RFC 5425) with a certificate made here, UDP (RFC 5426); in order, each
record once, and nothing skipped while the collector is down."""

from __future__ import annotations

import json
import re
import socket
import socketserver
import ssl
import subprocess
import threading

import pytest
from django.utils import timezone

from fhirai.api.access import access_record, login_record
from fhirai.api.auth import Principal
from fhirai.api.models import AccessEvent
from fhirai.audit.forward import audit_forward
from fhirai.audit.models import AuditForward, TimelineEvent
from fhirai.sweep import pipeline_sweep
from tests.support.product import free_port

pytestmark = pytest.mark.django_db

HEADER = re.compile(
    rb"^<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) \S+ fhirai - AuditEvent - \xef\xbb\xbf"
)
OPERATOR = Principal(name="user:op", role="operator", via="session")


class Collector:
    """A syslog collector on TCP (optionally TLS): splits the octet-counted stream into messages."""

    def __init__(self, tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.messages: list[bytes] = []
        collector = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = tls.wrap_socket(self.request, server_side=True) if tls else self.request
                buf = b""
                while chunk := sock.recv(65536):
                    buf += chunk
                    while b" " in buf:
                        length, _, rest = buf.partition(b" ")
                        if len(rest) < int(length):
                            break
                        collector.messages.append(rest[: int(length)])
                        buf = rest[int(length) :]

        socketserver.TCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _events(messages: list[bytes]) -> list[dict]:
    out = []
    for message in messages:
        match = HEADER.match(message)
        assert match, message[:120]
        out.append({"pri": int(match.group(1)), **json.loads(message[match.end() :])})
    return out


def test_access_records_and_exports_reach_the_collector_in_order_once(settings):
    collector = Collector()
    settings.FHIRAI_AUDIT_SYSLOG = f"tcp://127.0.0.1:{collector.port}"
    try:
        first = access_record(OPERATOR, "study.view", kind="study", ids=[7], detail="console")
        export = TimelineEvent.objects.create(
            item_kind="study",
            item_id=7,
            event="written_back",
            at=timezone.now(),
            detail="fhir-upstream: HTTP 200",
        )
        TimelineEvent.objects.create(item_kind="study", item_id=7, event="received", at=timezone.now())
        failed = login_record("login.failed", username="mallory", detail="wrong password")
        assert audit_forward() == 3  # the two access records and the export, not the receipt
        assert pipeline_sweep()["audit_forwarded"] == 0  # nothing new: nothing sent again
        collector.server.shutdown()  # let the handler threads finish reading
        events = _events(collector.messages)
    finally:
        collector.server.server_close()
    assert [e["id"] for e in events] == [f"access-{first.pk}", str(export.pk), f"access-{failed.pk}"]
    assert events[0]["pri"] == 85 and events[2]["pri"] == 84  # authpriv.notice; a failed login: warning
    assert events[1]["type"]["code"] == "110106"  # Export
    cursor = AuditForward.objects.get(name="syslog")
    assert cursor.sent == 3 and cursor.timeline_id == export.pk
    assert cursor.access_seq == AccessEvent.objects.get(pk=failed.pk).seq  # sent in chain order


def test_nothing_is_skipped_while_the_collector_is_down(settings):
    port = free_port()
    settings.FHIRAI_AUDIT_SYSLOG = f"tcp://127.0.0.1:{port}"
    records = [access_record(OPERATOR, "study.view", kind="study", ids=[i]) for i in range(3)]
    assert audit_forward() == 0  # connection refused: kept for later
    assert "ConnectionRefusedError" in AuditForward.objects.get(name="syslog").last_error
    collector = Collector(port=port)
    try:
        assert audit_forward() == 3
        collector.server.shutdown()
        assert [e["id"] for e in _events(collector.messages)] == [f"access-{r.pk}" for r in records]
    finally:
        collector.server.server_close()
    assert AuditForward.objects.get(name="syslog").last_error == ""


def test_tls_with_a_verified_collector(settings, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    collector = Collector(tls=server_tls)
    settings.FHIRAI_AUDIT_SYSLOG = f"tls://127.0.0.1:{collector.port}"
    settings.FHIRAI_AUDIT_SYSLOG_CA = str(cert)
    try:
        record = access_record(OPERATOR, "fhir.read", kind="fhir", detail="GET /fhir/Patient/1")
        assert audit_forward() == 1
        collector.server.shutdown()
        assert [e["id"] for e in _events(collector.messages)] == [f"access-{record.pk}"]
    finally:
        collector.server.server_close()
    # A collector whose certificate the CA file does not vouch for gets nothing.
    settings.FHIRAI_AUDIT_SYSLOG_CA = ""
    other = Collector(tls=server_tls)
    settings.FHIRAI_AUDIT_SYSLOG = f"tls://127.0.0.1:{other.port}"
    try:
        access_record(OPERATOR, "fhir.read", kind="fhir")
        assert audit_forward() == 0
        assert "SSL" in AuditForward.objects.get(name="syslog").last_error
    finally:
        other.close()


def test_udp(settings):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        settings.FHIRAI_AUDIT_SYSLOG = f"udp://127.0.0.1:{sock.getsockname()[1]}"
        record = access_record(OPERATOR, "study.search", kind="study", detail="console; searched by name")
        assert audit_forward() == 1
        event = _events([sock.recv(65536)])[0]
    assert event["id"] == f"access-{record.pk}" and event["subtype"][0]["code"] == "search-type"
