from __future__ import annotations

import base64

import pytest
from standardwebhooks import Webhook

from fhirai.errors import Unavailable
from integrations.webhooks import signing
from integrations.webhooks.sender import http_send
from tests.fhirai.webhooks.receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"sender-secret-for-tests-only-32b").decode()


def test_http_send_posts_a_body_the_standard_webhooks_verifier_accepts():
    with Receiver() as receiver:
        reply = http_send(receiver.url, secret=SECRET, message_id="msg_abc", body=b'{"type":"x"}', timeout=5)
    assert reply.status == 200
    [request] = receiver.state.requests
    assert Webhook(SECRET).verify(request.body, request.headers) == {"type": "x"}
    assert request.headers["webhook-id"] == "msg_abc"


def test_http_send_returns_a_refusal_as_a_reply():
    with Receiver() as receiver:
        receiver.state.always_fail = True
        reply = http_send(receiver.url, secret=SECRET, message_id="msg_abc", body=b"{}", timeout=5)
    assert reply.status == 503


def test_http_send_to_nobody_is_unavailable():
    with pytest.raises(Unavailable):
        http_send("http://127.0.0.1:9/hook", secret=SECRET, message_id="msg_abc", body=b"{}", timeout=2)


def test_our_signature_is_the_reference_implementations():
    from datetime import UTC, datetime

    at = datetime(2026, 3, 15, 8, 30, tzinfo=UTC)
    ours = signing.sign(SECRET, "msg_1", int(at.timestamp()), b'{"a":1}')
    assert ours == Webhook(SECRET).sign("msg_1", at, '{"a":1}')


def test_verify_accepts_one_matching_signature_among_several():
    body = b"{}"
    good = signing.sign(SECRET, "msg_2", 1000, body)
    signing.verify(
        SECRET,
        message_id="msg_2",
        timestamp="1000",
        signatures=f"v1,AAAA {good}",
        body=body,
        now=1100,
        tolerance=300,
    )
    with pytest.raises(signing.SignatureInvalid):
        signing.verify(
            SECRET,
            message_id="msg_2",
            timestamp="1000",
            signatures="v1,AAAA",
            body=body,
            now=1100,
            tolerance=300,
        )
