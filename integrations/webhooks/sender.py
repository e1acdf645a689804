"""The outbound webhook sender (FHIRAI_WEBHOOK_SENDER): one signed POST per attempt. The domain's
outbox decides when and what; this module only speaks HTTP and Standard Webhooks. The
webhook-timestamp is the attempt's time, the webhook-id the event's (the same on every retry)."""

from __future__ import annotations

import time

import requests

from fhirai.errors import Unavailable
from fhirai.webhooks.outbox import SendReply
from integrations.webhooks import signing

USER_AGENT = "fhirai-webhooks/1"
REPLY_LIMIT = 4000


def http_send(url: str, *, secret: str, message_id: str, body: bytes, timeout: float) -> SendReply:
    """POST the body; any HTTP answer is a reply (the outbox judges it), no answer is Unavailable.
    Redirects are not followed: a subscription names the URL that receives."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signing.headers(secret, message_id, int(time.time()), body),
    }
    try:
        response = requests.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise Unavailable(f"webhook receiver unreachable: {type(exc).__name__}") from None
    return SendReply(status=response.status_code, body=response.text[:REPLY_LIMIT])
