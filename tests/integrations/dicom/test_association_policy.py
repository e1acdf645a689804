"""Who may associate, on a real socket and on both engines: calling AE titles pinned to addresses
(FHIRAI_DICOM_ALLOW and the console's rules), the called AE check (FHIRAI_DICOM_CHECK_CALLED_AE),
and the rejections kept. Senders bind a chosen loopback address (Linux routes all of 127.0.0.0/8
to lo, so 127.0.0.2 and 127.0.0.3 are two distinct senders): pynetdicom's SCU where the association
goes through, a requestor written with pynetdicom's PDU classes where it is refused, and dcmtk's
echoscu for the called title.

Why not pynetdicom's SCU for the refusals: its requestor checks that its socket is still connected
only after the A-ASSOCIATE-RQ is out, so when the RJ and the close win that race (the SCP shares
this process and its GIL) it reports an abort with no RJ; dcmtk (another process) and the byte
level requestor read the RJ itself."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from fhirai.ingest import sources
from fhirai.ingest.models import Rejection, SourceRule
from fhirai.ingest.sources import source_rule_add, sources_changed
from integrations.dicom import pdu, status
from integrations.dicom.scp import server_start
from tests.support.product import free_port

pytestmark = pytest.mark.django_db(transaction=True)
DCMTK = pytest.mark.skipif(not shutil.which("echoscu"), reason="needs dcmtk")
CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)  # PS3.8 9.3.4: permanent, service-user, reason 3
CALLED_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x07)  # reason 7


@pytest.fixture(params=["fhirai", "pynetdicom"])
def scp(request, settings):
    """The SCP on each engine, on 127.0.0.1; a sender bound to 127.0.0.2 reaches it from there."""
    settings.FHIRAI_DICOM_ENGINE = request.param
    settings.FHIRAI_DICOM_ALLOW = []
    settings.FHIRAI_DICOM_CHECK_CALLED_AE = False
    sources_changed()  # the allow-list rows are cached per process for a few seconds
    port = free_port()
    server = server_start(("127.0.0.1", port))
    yield port
    server.shutdown()
    sources_changed()


def _associate(port: int, *, calling: str = "TESTSCU", called: str = "FHIRAI", source: str = "127.0.0.1"):
    scu = AE(ae_title=calling)
    scu.add_requested_context(Verification)
    return scu.associate("127.0.0.1", port, ae_title=called, bind_address=(source, 0))


def _echo_ok(port: int, **kwargs: str) -> bool:
    assoc = _associate(port, **kwargs)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == status.SUCCESS
    assoc.release()
    return ok


def _associate_rq(calling: str, called: str) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing Verification."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    cx = build_context(Verification, [ImplicitVRLittleEndian])
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4.5"
    primitive.user_information = [length, implementation]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return rq.encode()


def _rejected_with(
    port: int,
    *,
    calling: str = "TESTSCU",
    called: str = "FHIRAI",
    source: str = "127.0.0.1",
    host: str = "127.0.0.1",
) -> tuple[int, int, int]:
    """The A-ASSOCIATE-RJ's (result, source, reason), PS3.8 9.3.4, to a sender at `source`."""
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(_associate_rq(calling, called))
        reply = b""
        while len(reply) < 10:  # an RJ is 10 bytes: header, reserved, result, source, reason
            chunk = sock.recv(10 - len(reply))
            assert chunk, f"closed without an answer after {reply!r}"
            reply += chunk
    pdu_type, length = struct.unpack(">BxI", reply[:6])
    assert pdu_type == pdu.A_ASSOCIATE_RJ, f"PDU type 0x{pdu_type:02X}, not an A-ASSOCIATE-RJ"
    return (reply[7], reply[8], reply[9])


def _kept(count: int = 1) -> dict[str, Rejection]:
    """The kept rejections by peer (AE@address), once `count` are there: each engine records one
    just after sending its A-ASSOCIATE-RJ, in the association's thread, so not in sending order."""
    for _ in range(200):
        if Rejection.objects.count() >= count:
            break
        time.sleep(0.02)
    return {r.peer: r for r in Rejection.objects.all()}


def test_a_plain_entry_admits_its_title_from_any_address(scp, settings):
    settings.FHIRAI_DICOM_ALLOW = ["TESTSCU"]
    assert _echo_ok(scp, source="127.0.0.1")
    assert _echo_ok(scp, source="127.0.0.2")
    assert not Rejection.objects.exists()


def test_a_pinned_entry_admits_its_title_from_its_address_and_network(scp, settings):
    settings.FHIRAI_DICOM_ALLOW = ["TESTSCU@127.0.0.2", "PACS@127.0.0.0/30"]
    assert _echo_ok(scp, calling="TESTSCU", source="127.0.0.2")
    assert _echo_ok(scp, calling="PACS", source="127.0.0.3")
    assert not Rejection.objects.exists()


def test_a_pinned_title_from_another_address_is_refused_like_an_unknown_title(scp, settings):
    settings.FHIRAI_DICOM_ALLOW = ["TESTSCU@127.0.0.2", "PACS@127.0.0.0/30"]
    # The sender hears the same answer either way: its calling AE title is not recognized.
    assert _rejected_with(scp, calling="TESTSCU", source="127.0.0.3") == CALLING_AE_NOT_RECOGNIZED
    assert _rejected_with(scp, calling="PACS", source="127.0.0.5") == CALLING_AE_NOT_RECOGNIZED
    assert _rejected_with(scp, calling="STRANGER", source="127.0.0.2") == CALLING_AE_NOT_RECOGNIZED
    kept = _kept(3)
    wrong_address, wrong_network, unknown = (
        kept["TESTSCU@127.0.0.3"],
        kept["PACS@127.0.0.5"],
        kept["STRANGER@127.0.0.2"],
    )
    # The operator is told which rule failed, and not the networks that would have passed.
    assert wrong_address.code == "calling-ae-address-not-allowed" and "127.0.0.2" not in wrong_address.detail
    assert wrong_network.code == "calling-ae-address-not-allowed"
    assert unknown.code == "calling-ae-not-allowed"


def test_a_console_rule_with_a_network_takes_effect_without_a_restart(scp, settings):
    settings.FHIRAI_DICOM_ALLOW = ["OTHER"]
    assert _rejected_with(scp, source="127.0.0.2") == CALLING_AE_NOT_RECOGNIZED
    rule = source_rule_add("dicom-ae", "TESTSCU@127.0.0.0/31", actor="test")  # as the console does
    assert rule.value == "TESTSCU@127.0.0.0/31"
    assert _echo_ok(scp, source="127.0.0.1")
    assert _rejected_with(scp, source="127.0.0.2") == CALLING_AE_NOT_RECOGNIZED
    _kept(2)  # both from TESTSCU@127.0.0.2, one before the rule and one after
    assert sorted(r.code for r in Rejection.objects.all()) == [
        "calling-ae-address-not-allowed",
        "calling-ae-not-allowed",
    ]


def test_a_rule_from_another_process_is_seen_once_the_cache_expires(scp, monkeypatch):
    """RULES_TTL is unchanged by addresses: a row another process adds (the console runs in the
    HTTP process) reaches this listener when its cached list expires, not before."""
    monkeypatch.setattr(sources, "RULES_TTL", 3600.0)
    assert _echo_ok(scp, source="127.0.0.2")  # caches "no rules": everyone
    SourceRule.objects.create(kind="dicom-ae", value="TESTSCU@127.0.0.9", created_at="2026-01-01T00:00Z")
    assert _echo_ok(scp, source="127.0.0.2")  # still the cached list
    monkeypatch.setattr(sources, "RULES_TTL", 0.0)
    assert _rejected_with(scp, source="127.0.0.2") == CALLING_AE_NOT_RECOGNIZED
    assert [r.code for r in _kept().values()] == ["calling-ae-address-not-allowed"]


def test_without_the_called_ae_check_any_called_title_is_answered(scp):
    assert _echo_ok(scp, called="WHOEVER")


def test_with_the_called_ae_check_only_fhirais_titles_are_answered(scp, settings):
    settings.FHIRAI_DICOM_CHECK_CALLED_AE = True
    assert _echo_ok(scp, called="FHIRAI")
    assert _rejected_with(scp, called="WHOEVER") == CALLED_AE_NOT_RECOGNIZED
    # Without priors configured the priors title is not one of ours.
    settings.FHIRAI_PRIORS_PACS = ""
    assert _rejected_with(scp, called="FHIRAI_PRIORS") == CALLED_AE_NOT_RECOGNIZED
    _kept(2)
    kept = Rejection.objects.all()
    assert {r.code for r in kept} == {"called-ae-not-recognized"}
    assert sorted("WHOEVER" in r.detail for r in kept) == [False, True]


def test_with_priors_configured_the_priors_title_is_answered(scp, settings):
    settings.FHIRAI_DICOM_CHECK_CALLED_AE = True
    settings.FHIRAI_PRIORS_PACS = "PACS@127.0.0.1:4242"  # where C-MOVE requests would go
    settings.FHIRAI_PRIORS_AE = "FHIRAI_PRIORS"
    assert _echo_ok(scp, called="FHIRAI_PRIORS")


def test_an_unknown_sender_learns_nothing_about_the_called_titles(scp, settings):
    """The calling side is checked first: a sender not let in gets reason 3 whatever it calls."""
    settings.FHIRAI_DICOM_ALLOW = ["CT_1"]
    settings.FHIRAI_DICOM_CHECK_CALLED_AE = True
    assert _rejected_with(scp, called="WHOEVER") == CALLING_AE_NOT_RECOGNIZED
    assert [r.code for r in _kept().values()] == ["calling-ae-not-allowed"]


@DCMTK
def test_echoscu_with_a_wrong_called_title_is_refused_only_when_checked(scp, settings):
    def echoscu(called: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["echoscu", "-aet", "CT_1", "-aec", called, "127.0.0.1", str(scp)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "TCP_NODELAY": "1"},
            check=False,
        )

    settings.FHIRAI_DICOM_ALLOW = ["CT_1@127.0.0.1"]
    assert echoscu("ANYTHING").returncode == 0
    settings.FHIRAI_DICOM_CHECK_CALLED_AE = True
    refused = echoscu("ANYTHING")
    assert refused.returncode != 0 and "Called AE Title Not Recognized" in refused.stdout + refused.stderr
    assert echoscu("FHIRAI").returncode == 0
    assert [r.code for r in _kept().values()] == ["called-ae-not-recognized"]


@pytest.mark.parametrize("engine", ["fhirai", "pynetdicom"])
def test_an_association_over_the_limit_is_kept_as_too_many_associations(engine, settings):
    """Not as a calling AE refusal: the sender is let in, just not now (rejected-transient)."""
    settings.FHIRAI_DICOM_ENGINE = engine
    settings.FHIRAI_DICOM_ALLOW = ["TESTSCU@127.0.0.0/8"]
    settings.FHIRAI_DICOM_MAX_ASSOCIATIONS = 1  # read when the listener starts
    sources_changed()
    port = free_port()
    server = server_start(("127.0.0.1", port))
    try:
        held = _associate(port)
        assert held.is_established
        assert _rejected_with(port, source="127.0.0.2") == (0x02, 0x03, 0x02)  # PS3.8: local limit exceeded
        held.release()
    finally:
        server.shutdown()
    [kept] = _kept().values()
    assert kept.code == "too-many-associations" and kept.peer == "TESTSCU@127.0.0.2"


@pytest.mark.parametrize("engine", ["fhirai", "pynetdicom"])
def test_a_sender_pinned_to_an_ipv6_address(engine, settings):
    settings.FHIRAI_DICOM_ENGINE = engine
    settings.FHIRAI_DICOM_ALLOW = ["TESTSCU@[::1]", "PACS@2001:db8::/64"]
    sources_changed()
    port = free_port()
    server = server_start(("::1", port))
    try:
        scu = AE(ae_title="TESTSCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate("::1", port, ae_title="FHIRAI")
        assert assoc.is_established and assoc.send_c_echo().Status == status.SUCCESS
        assoc.release()
        assert _rejected_with(port, calling="PACS", source="::1", host="::1") == CALLING_AE_NOT_RECOGNIZED
    finally:
        server.shutdown()
    [kept] = _kept().values()
    assert kept.code == "calling-ae-address-not-allowed" and kept.peer == "PACS@::1"


def test_a_malformed_allow_list_stops_the_scp_at_startup(settings):
    settings.FHIRAI_DICOM_ALLOW = ["CT_1@10.20.1.300"]
    with pytest.raises(ImproperlyConfigured, match="FHIRAI_DICOM_ALLOW"):
        server_start(("127.0.0.1", free_port()))


def test_an_association_that_cannot_be_checked_is_not_let_in(scp, monkeypatch):
    """Fail closed on both engines (pynetdicom logs a failing EVT_REQUESTED handler and accepts)."""

    def broken(**kwargs: str) -> None:
        raise RuntimeError("the rules could not be read")

    monkeypatch.setattr("integrations.dicom.scp.dicom_association_check", broken)
    assoc = _associate(scp)
    assert not assoc.is_established
