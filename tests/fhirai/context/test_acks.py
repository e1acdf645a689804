"""Enhanced mode: the application acknowledgment reaches the sender's peer after processing."""

from __future__ import annotations

import time

import pytest

from fhirai.context.acks import app_ack_send
from fhirai.context.messages import messages_process
from fhirai.ingest.messages import messages_receive
from fhirai.ingest.models import Message
from integrations.hl7.handlers import inbound_from
from tests.support.hl7msg import PID, message, msh
from tests.support.mllp_peer import MllpPeer

pytestmark = pytest.mark.django_db(transaction=True)


def _apply(raw: bytes) -> Message:
    [stored] = messages_receive([inbound_from(raw, "t")[1]])
    messages_process(up_to=stored.message_id)
    return Message.objects.get(pk=stored.message_id)


def _wait(peer: MllpPeer) -> None:
    deadline = time.monotonic() + 5
    while not peer.messages and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("segments", "code"),
    [
        (("EVN|A01", PID), "AA"),
        (("ORC|NW|1", PID, "OBR|1|1"), "AE"),  # an ORM whose OBR carries no accession cannot be applied
    ],
)
def test_application_ack_goes_to_the_senders_peer(settings, segments, code):
    message_type = "ADT^A01^ADT_A01" if code == "AA" else "ORM^O01"
    with MllpPeer() as peer:
        settings.FHIRAI_HL7_PEERS = {"RIS": ("127.0.0.1", peer.port)}
        row = _apply(message(msh("APP-1", message_type, extra="|||AL|AL"), *segments))
        assert row.app_ack_state == "pending" and row.app_ack_code == code
        app_ack_send(row.pk)
        _wait(peer)
        seg = peer.segments()
    assert seg["MSH"][0][8].startswith("ACK") and seg["MSH"][0][14:16] == ["NE", "NE"]
    assert seg["MSA"][0][1:3] == [code, "APP-1"]
    assert Message.objects.get(pk=row.pk).app_ack_state == "sent"


def test_no_application_ack_when_msh16_says_error_only_and_all_went_well(settings):
    row = _apply(message(msh("APP-2", "ADT^A01^ADT_A01", extra="|||AL|ER"), "EVN|A01", PID))
    assert row.app_ack_state == ""


def test_a_sender_without_a_configured_peer_is_a_visible_failure(settings):
    settings.FHIRAI_HL7_PEERS = {}
    row = _apply(message(msh("APP-3", "ADT^A01^ADT_A01", extra="|||AL|AL"), "EVN|A01", PID))
    app_ack_send(row.pk)
    assert Message.objects.get(pk=row.pk).app_ack_state == "failed"
