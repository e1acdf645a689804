"""/hooks/<source>: an integration engine posts HL7 v2, FHIR (a resource or a Bundle) or a JSON
event, signed in the Standard Webhooks scheme with the source's secret (FHIRAI_HOOK_SOURCES), or
with an API token of the admin or operator role (Authorization: Bearer; then a webhook-id, when
sent, is still checked against replays). A JSON event asks for an operator action on an item:
{"type": "item.retry" | "item.replay", "item": "study/ID" | "message/ID"}, answered 202. The request is
checked at the door (known source, headers present, timestamp within FHIRAI_HOOK_TOLERANCE_SECONDS,
signature, a body we read, a webhook-id not seen before) and then makes the same domain call the
listener for its format makes: messages_receive for HL7 (answered with the ACK), fhir_create or
bundle_process for FHIR (answered with the resource or the response Bundle).

Refusals: 404 unknown source, 401 unsigned / forged / stale, 409 a replayed webhook-id, 415 a body
that is neither HL7 v2 nor FHIR JSON, each a JSON {"error", "detail"}; the body is kept as a
rejection (protocol `webhook`, blob area `rejected`) and nothing it carried enters the pipeline."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from fhirai import errors as domain
from fhirai.api.auth import PHI_ROLES, bearer, principal_of
from fhirai.ingest.fhir import EntryError, bundle_process, fhir_create
from fhirai.ingest.receive import input_reject
from fhirai.ops.retry import NotRetryable, message_replay, message_retry, study_replay, study_retry
from fhirai.results.store import ResourceInvalid
from fhirai.webhooks.receipts import hook_receipt_forget, hook_receipt_record
from integrations.fhir import outcome
from integrations.fhir.formats import has_nul
from integrations.fhir.outcome import FHIR_JSON
from integrations.hl7.views import hl7_over_http
from integrations.webhooks import signing

log = logging.getLogger(__name__)
HL7_TYPES = {"application/hl7-v2", "application/hl7-v2+er7", "x-application/hl7-v2+er7"}
FHIR_TYPES = {"application/fhir+json", "application/json+fhir"}
PROTOCOL = "webhook"
SOURCE_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")


class _Refused(Exception):  # noqa: N818 - carries the answer
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@csrf_exempt
def hook(request: HttpRequest, source: str) -> HttpResponse:
    """POST /hooks/<source>."""
    if request.method != "POST":  # not a hook at all: nothing to keep
        response = JsonResponse(
            {"error": "method-not-allowed", "detail": "only POST is accepted here"}, status=405
        )
        response["Allow"] = "POST"
        return response
    peer = f"hook:{source[:40]}@{request.META.get('REMOTE_ADDR', '?')}"
    body = b""
    try:
        body = _body(request)
        message_id, actor = _authenticated(request, source, body)
        kind = body_kind(request.content_type or "", body)
        if kind is None:
            raise _Refused(
                415,
                "unsupported-media-type",
                "send HL7 v2 (application/hl7-v2 or x-application/hl7-v2+er7), "
                "FHIR JSON (application/fhir+json) or a JSON event (application/json)",
            )
        if "\x00" in message_id:  # no text column (nor any sender's id) holds a NUL
            raise _Refused(400, "invalid-webhook-id", "webhook-id carries a NUL character")
        if message_id and not hook_receipt_record(source, message_id):
            raise _Refused(409, "replayed", "this webhook-id was already received from this source")
    except _Refused as refused:
        return _refuse(refused, body=body, peer=peer, source=source)
    try:
        if kind == "hl7":
            response = hl7_over_http(body, peer)
        elif kind == "fhir":
            response = _fhir(body, peer)
        else:
            response = _event(body, actor)
    except _Refused as refused:
        if message_id:
            hook_receipt_forget(source, message_id)
        return _refuse(refused, body=body, peer=peer, source=source)
    except Exception:
        if message_id:
            hook_receipt_forget(source, message_id)  # not taken: the sender's retry is not a replay
        raise
    if response.status_code == 503 and message_id:
        hook_receipt_forget(source, message_id)
    return response


def _body(request: HttpRequest) -> bytes:
    try:
        return request.body
    except RequestDataTooBig:
        raise _Refused(413, "too-large", "the body is larger than this server accepts") from None


def _authenticated(request: HttpRequest, source: str, body: bytes) -> tuple[str, str]:
    """(webhook-id, who), once the source is known and its signature checks out, or the request
    carries an API token of the admin or operator role."""
    token = bearer(request)
    if token is not None:
        if not SOURCE_NAME.fullmatch(source):
            raise _Refused(404, "unknown-source", "a hook source name is 1 to 40 letters, digits, _ or -")
        principal = principal_of(request)
        if principal is None:
            raise _Refused(
                401, "unauthenticated", "the Bearer token is not valid (unknown, malformed or revoked)"
            )
        if principal.role not in PHI_ROLES:
            raise _Refused(403, "forbidden", f"the {principal.role} role may not post hooks")
        return request.headers.get(signing.ID, "")[:128], principal.name
    secret = settings.FHIRAI_HOOK_SOURCES.get(source)
    if secret is None:
        raise _Refused(404, "unknown-source", "no hook source of this name is configured")
    message_id = request.headers.get(signing.ID, "")
    try:
        signing.verify(
            secret,
            message_id=message_id,
            timestamp=request.headers.get(signing.TIMESTAMP, ""),
            signatures=request.headers.get(signing.SIGNATURE, ""),
            body=body,
            now=time.time(),
            tolerance=settings.FHIRAI_HOOK_TOLERANCE_SECONDS,
        )
    except signing.SignatureInvalid as exc:
        raise _Refused(401, "unauthenticated", str(exc)) from None
    return message_id, f"hook:{source}"


def body_kind(content_type: str, body: bytes) -> str | None:
    """ "hl7" or "fhir" by the media type (text/* starting with MSH is HL7 too); None otherwise."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in HL7_TYPES or (media.startswith("text/") and body.lstrip().startswith(b"MSH")):
        return "hl7"
    if media in FHIR_TYPES:
        return "fhir"
    if media == "application/json":
        try:
            content = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if isinstance(content, dict):
            # A FHIR resource sent as plain JSON is FHIR; anything else is an event.
            return "fhir" if isinstance(content.get("resourceType"), str) else "event"
    return None


EVENT_ACTIONS = {
    ("item.retry", "study"): study_retry,
    ("item.replay", "study"): study_replay,
    ("item.retry", "message"): message_retry,
    ("item.replay", "message"): message_replay,
}


def _event(raw: bytes, actor: str) -> HttpResponse:
    """A JSON event: an operator action on one item, by the same domain calls as the console."""
    content = json.loads(raw)
    kind, _, item_id = str(content.get("item", "")).partition("/")
    action = EVENT_ACTIONS.get((str(content.get("type", "")), kind))
    if action is None or not item_id.isdigit() or not 0 < int(item_id) < 2**63:
        raise _Refused(
            422,
            "invalid-event",
            'an event is {"type": "item.retry" or "item.replay", "item": "study/ID" or "message/ID"}',
        )
    try:
        outcome_ = action(int(item_id), actor=actor)
    except domain.NotFound as exc:
        return JsonResponse({"error": "not-found", "detail": str(exc)}, status=404)
    except NotRetryable as exc:
        return JsonResponse({"error": "conflict", "detail": str(exc)}, status=409)
    detail = outcome_[1] if isinstance(outcome_, tuple) else str(outcome_)
    return JsonResponse({"item": f"{kind}/{item_id}", "detail": detail}, status=202)


def _refuse(refused: _Refused, *, body: bytes, peer: str, source: str) -> HttpResponse:
    """Keep the refused request (invariant 4), then answer."""
    try:
        input_reject(protocol=PROTOCOL, raw=body, peer=peer, code=refused.code, detail=refused.detail)
    except DatabaseError:
        log.warning("a refused hook from %s could not be kept: database unavailable", peer)
    log.info("hook %s refused: %s %s", source[:40], refused.status, refused.code)
    return JsonResponse({"error": refused.code, "detail": refused.detail}, status=refused.status)


def _fhir(raw: bytes, peer: str) -> HttpResponse:
    """As the FHIR facade's create and base POST: the resource (201, or 200 for an existing match)
    or the transaction/batch response Bundle; refusals are OperationOutcomes and are kept."""
    try:
        content = json.loads(raw)
        if not isinstance(content, dict) or not isinstance(content.get("resourceType"), str):
            raise domain.InvalidInput("invalid", "the body is not a FHIR resource (no resourceType)")
        if has_nul(content):
            raise domain.InvalidInput("invalid", "a string or name carries a NUL character (\\u0000)")
        if content["resourceType"] == "Bundle" and content.get("type") in ("transaction", "batch"):
            return _json(bundle_process(content), 200)
        row, created = fhir_create(content)
    except (ValueError, RecursionError, domain.InvalidInput) as exc:
        return _invalid(exc, raw, peer)
    except domain.NotFound as exc:
        return outcome.outcome(outcome.NOT_FOUND, str(exc))
    except (domain.Unavailable, DatabaseError):
        return outcome.outcome(outcome.TRANSIENT, "storage is unavailable; retry later")
    response = _json(row.content, 201 if created else 200)
    response["Location"] = (
        f"{settings.FHIRAI_BASE_URL}/fhir/{row.resource_type}/{row.rid}/_history/{row.version_id}"
    )
    return response


def _invalid(exc: Exception, raw: bytes, peer: str) -> HttpResponse:
    cause = exc.cause if isinstance(exc, EntryError) else exc
    code = getattr(exc, "code", "invalid-json")
    detail = getattr(exc, "detail", "the body is not JSON")
    input_reject(protocol=PROTOCOL, raw=raw, peer=peer, code=str(code)[:64], detail=detail)
    if isinstance(cause, ResourceInvalid):
        issues: list[dict[str, Any]] = [
            {"severity": "error", "code": "invalid", "diagnostics": m, "expression": [e]}
            for e, m in cause.issues
        ]
        return _json({"resourceType": "OperationOutcome", "issue": issues}, 400)
    kind = outcome.NOT_SUPPORTED if code == "not-supported" else outcome.INVALID
    return outcome.outcome(kind, detail)


def _json(body: dict[str, Any], status: int) -> HttpResponse:
    return HttpResponse(json.dumps(body), status=status, content_type=FHIR_JSON)
