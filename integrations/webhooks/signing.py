"""Standard Webhooks signatures (https://github.com/standard-webhooks/standard-webhooks, spec v1):
`webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, keyed
with the base64-decoded part of a `whsec_` secret. Several space-separated signatures may be sent
(secret rotation); one match is enough. Comparison is constant-time."""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"  # nosec B105  # the Standard Webhooks marker of a secret, not a secret
ID = "webhook-id"
TIMESTAMP = "webhook-timestamp"
SIGNATURE = "webhook-signature"


class SignatureInvalid(Exception):  # noqa: N818 - a refusal reason, not a failure of fhirai's
    """The request is not authentically from the holder of the secret, or not fresh."""


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    return {ID: message_id, TIMESTAMP: str(timestamp), SIGNATURE: sign(secret, message_id, timestamp, body)}


def verify(
    secret: str, *, message_id: str, timestamp: str, signatures: str, body: bytes, now: float, tolerance: int
) -> None:
    """Raise SignatureInvalid unless the headers are present, the timestamp is within `tolerance`
    seconds of `now` (either way: a replay of an old capture is refused), and one v1 signature matches."""
    if not message_id or not timestamp or not signatures:
        raise SignatureInvalid("the webhook-id, webhook-timestamp and webhook-signature headers are required")
    try:
        sent_at = int(timestamp)
        stale = abs(now - sent_at) > tolerance
    except (ValueError, OverflowError):  # OverflowError: too large to compare with the clock
        raise SignatureInvalid("webhook-timestamp is not an integer") from None
    if stale:
        raise SignatureInvalid(f"webhook-timestamp is more than {tolerance} s from this server's time")
    expected = sign(secret, message_id, sent_at, body).encode()
    for candidate in signatures.split():
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return
    raise SignatureInvalid("no webhook-signature matches")
