"""Webhook ingress: the Standard Webhooks check (integrations.webhooks.signing.verify) on its own,
and POST /hooks/<source> through the test client. Nothing verifies unless correctly signed, a single
flipped bit anywhere in a signed request fails it, and no header or body makes the view raise."""

from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import strategies as st

from integrations.webhooks import signing
from tests.fuzz.budget import fuzz_target
from tests.fuzz.hl7gen import mutated_message

pytestmark = pytest.mark.django_db
SECRET = "whsec_" + base64.b64encode(b"fuzz-secret-for-tests-only-32byt").decode()
TOLERANCE = 300
header_text = st.text(st.characters(codec="latin-1"), max_size=40) | st.sampled_from(
    ["", " ", "v1,", "v1,AAAA", "v2,x", "0", "-1", "1e9", "9" * 400, "\x00", "msg_1", "١٢٣"]
)
media = st.sampled_from(
    [
        "application/fhir+json",
        "application/json",
        "x-application/hl7-v2+er7",
        "application/hl7-v2",
        "text/plain",
        "application/octet-stream",
        "",
    ]
)
bodies = (
    st.binary(max_size=300)
    | mutated_message()
    | st.sampled_from(
        [
            b'{"resourceType": "Patient", "name": [{"family": "Doe"}]}',
            b'{"resourceType": "Patient", "name": [{"family": "a\\u0000b"}]}',
            b'{"type": "item.retry", "item": "message/1"}',
            b'{"type": "item.replay", "item": "study/99999999999999999999"}',
            b'{"resourceType": "Bundle", "type": "transaction", "entry": [{}]}',
            b"[" * 5000 + b"]" * 5000,
            b"{}",
            b"null",
        ]
    )
)


@fuzz_target(
    "webhook_verify_any_headers",
    ci=500,
    message_id=header_text,
    timestamp=header_text | st.integers().map(str),
    signatures=header_text,
    body=st.binary(max_size=200),
)
def test_verify_never_accepts_unsigned_input_and_only_raises_signature_invalid(
    message_id, timestamp, signatures, body
):
    now = time.time()
    with pytest.raises(signing.SignatureInvalid):
        signing.verify(
            SECRET,
            message_id=message_id,
            timestamp=timestamp,
            signatures=signatures,
            body=body,
            now=now,
            tolerance=TOLERANCE,
        )


@fuzz_target(
    "webhook_verify_bit_flips",
    ci=500,
    message_id=st.text(st.characters(codec="latin-1"), min_size=1, max_size=30),
    body=st.binary(max_size=200),
    where=st.sampled_from(["body", "id", "timestamp", "signature"]),
    bit=st.integers(min_value=0),
)
def test_a_signed_message_verifies_and_any_single_bit_flip_fails(message_id, body, where, bit):
    now = int(time.time())
    fields = {"id": message_id.encode("latin-1"), "timestamp": str(now).encode(), "body": body}
    fields["signature"] = signing.sign(SECRET, message_id, now, body).encode()
    signing.verify(
        SECRET,
        message_id=message_id,
        timestamp=str(now),
        signatures=fields["signature"].decode(),
        body=body,
        now=now,
        tolerance=TOLERANCE,
    )
    target = bytearray(fields[where])
    if not target:
        target = bytearray(b"\x00")
    target[(bit // 8) % len(target)] ^= 1 << (bit % 8)
    fields[where] = bytes(target)
    with pytest.raises(signing.SignatureInvalid):
        signing.verify(
            SECRET,
            message_id=fields["id"].decode("latin-1"),
            timestamp=fields["timestamp"].decode("latin-1"),
            signatures=fields["signature"].decode("latin-1"),
            body=fields["body"],
            now=now,
            tolerance=TOLERANCE,
        )


@pytest.fixture
def hook_sources(settings, blob_dir):
    settings.FHIRAI_HOOK_SOURCES = {"engine": SECRET}
    settings.FHIRAI_HOOK_TOLERANCE_SECONDS = TOLERANCE


@fuzz_target(
    "webhook_view_unsigned",
    ci=120,
    source=st.sampled_from(["engine", "other", "x" * 50, "en gine", "%00"]),
    headers=st.fixed_dictionaries(
        {},
        optional={
            "webhook-id": header_text,
            "webhook-timestamp": header_text | st.integers().map(str),
            "webhook-signature": header_text,
            "Authorization": st.sampled_from(["Bearer x", "Bearer ", "Basic abc", "Bearer \x00"]),
        },
    ),
    content_type=media,
    body=bodies,
)
def test_unsigned_or_forged_hooks_are_refused_without_an_exception(
    client, hook_sources, source, headers, content_type, body
):
    response = client.post(f"/hooks/{source}", data=body, content_type=content_type, headers=headers)
    assert response.status_code in (401, 404, 405, 413), (response.status_code, response.content[:200])
    assert "error" in json.loads(response.content)


@fuzz_target(
    "webhook_view_signed",
    ci=120,
    message_id=st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), min_size=1, max_size=40)
    | st.text(min_size=129, max_size=140, alphabet="ab"),
    content_type=media,
    body=bodies,
    flip=st.none() | st.integers(min_value=0),
)
def test_signed_hooks_are_answered_and_a_flipped_body_bit_is_refused(
    client, hook_sources, message_id, content_type, body, flip
):
    now = int(time.time())
    headers = signing.headers(SECRET, message_id, now, body)
    if flip is not None and body:
        mutated = bytearray(body)
        mutated[(flip // 8) % len(mutated)] ^= 1 << (flip % 8)
        body = bytes(mutated)
    response = client.post("/hooks/engine", data=body, content_type=content_type, headers=headers)
    assert response.status_code < 500, response.content[:300]
    if flip is not None and headers and body:
        assert response.status_code == 401
    else:
        assert response.status_code != 401, response.content[:300]
