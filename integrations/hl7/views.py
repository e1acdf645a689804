"""HL7 v2 over HTTP for engines that prefer it: POST one message, the ACK is the response body
(same checks, same durable commit before the answer as over MLLP)."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from fhirai import errors as domain
from fhirai.ingest.messages import messages_dispatch, messages_receive
from fhirai.ingest.receive import input_reject
from integrations.hl7 import errors
from integrations.hl7.errors import HL7Error
from integrations.hl7.handlers import header_or_none, inbound_from, reply_for

ER7 = "x-application/hl7-v2+er7"
log = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def receive(request: HttpRequest) -> HttpResponse:
    """200 with AA/AE/AR in the body; 503 (with AR, Retry-After) when storage is unavailable."""
    return hl7_over_http(request.body, f"http:{request.META.get('REMOTE_ADDR', '?')}")


def hl7_over_http(raw: bytes, peer: str) -> HttpResponse:
    """One HL7 v2 message posted over HTTP (/hl7/, signed /hooks/): the MLLP listener's checks and
    durable commit, then the ACK as the response body. A message committed but not queued (broker
    down) is still acknowledged: it is durable, and the sweep dispatches it."""
    try:
        header, inbound = inbound_from(raw, peer)
    except HL7Error as exc:
        input_reject(protocol="hl7", raw=raw, peer=peer, code=exc.condition[0], detail=str(exc))
        return _reply(reply_for(header_or_none(raw), None, exc))
    try:
        [stored] = messages_receive([inbound])
    except domain.Unavailable:
        error = HL7Error(
            errors.APPLICATION_INTERNAL_ERROR, "temporarily unable to store the message", reject=True
        )
        response = _reply(reply_for(header, None, error), status=503)
        response["Retry-After"] = "30"
        return response
    if not stored.duplicate:
        try:
            messages_dispatch(stored.message_id)
        except Exception:  # noqa: BLE001 - committed already; the sweep dispatches it
            log.warning("HL7 message %s from %s not queued now; the sweep will", stored.message_id, peer[:40])
    return _reply(reply_for(header, stored, None))


def _reply(body: bytes | None, status: int = 200) -> HttpResponse:
    return HttpResponse(body or b"", status=status if body else 204, content_type=ER7)
