"""The FHIR Subscriptions rest-hook endpoint, /fhir-subscription/: HTTP around
fhirai.subscriptions.notify. The hospital's FHIR server POSTs each notification here (R4 classic:
the changed resource or an empty body; topic-based: a notification Bundle); a classic rest-hook
with payload may instead PUT the resource to /fhir-subscription/Type/id.

Authentication is the shared secret FHIRAI_FHIR_SUBSCRIPTION_SECRET that the Subscription's
channel.header carries (`Authorization: Bearer <secret>`, or `X-Fhirai-Subscription-Secret`),
compared in constant time; without it configured the endpoint does not exist (404). Answers are
OperationOutcomes: 200 applied (refused resources listed as issues), 400 a notification that cannot
be read (with the location), 401 a wrong secret, 503 with Retry-After when a resource cannot be
fetched from the notifying server now, so the server retries."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from fhirai import errors
from fhirai.results.store import ResourceInvalid
from fhirai.results.writeback import upstream
from fhirai.subscriptions.notify import (
    Fetch,
    NotificationInvalid,
    Result,
    notification_receive,
    notification_unreadable,
)
from integrations.fhir import outcome
from integrations.fhir.formats import body_read
from integrations.fhir.outcome import FHIR_JSON
from integrations.fhir.upstream import HttpUpstream

log = logging.getLogger(__name__)
UNAUTHORIZED = ("security", 401)
TOO_LARGE = ("too-costly", 413)
UNSUPPORTED_MEDIA = ("not-supported", 415)
SECRET_HEADER = "X-Fhirai-Subscription-Secret"  # nosec B105  # the header's name; the secret is a setting


@csrf_exempt
def notification_endpoint(request: HttpRequest) -> HttpResponse:
    """POST /fhir-subscription/: one notification of any form."""
    return _guarded(request, ("POST",), target="")


@csrf_exempt
def resource_endpoint(request: HttpRequest, rtype: str, rid: str) -> HttpResponse:
    """PUT (or POST) /fhir-subscription/Type/id: an R4 classic rest-hook sending its payload as an
    update to [endpoint]/Type/id, as servers that treat the endpoint as a FHIR base do."""
    return _guarded(request, ("PUT", "POST"), target=f"{rtype}/{rid}")


def _guarded(request: HttpRequest, methods: tuple[str, ...], *, target: str) -> HttpResponse:
    secret = settings.FHIRAI_FHIR_SUBSCRIPTION_SECRET
    if not secret:
        return outcome.outcome(outcome.NOT_FOUND, "FHIR subscriptions are not enabled on this server")
    if request.method not in methods:
        response = outcome.outcome(outcome.METHOD_NOT_ALLOWED, f"{request.method} is not supported here")
        response["Allow"] = ", ".join(methods)
        return response
    if not _authorized(request, secret):
        response = outcome.outcome(UNAUTHORIZED, "the subscription secret is missing or wrong")
        response["WWW-Authenticate"] = 'Bearer realm="fhirai-subscription"'
        return response
    try:
        body = _body(request)
    except _Unreadable as unreadable:
        try:
            notification_unreadable([(unreadable.where, unreadable.message)])
        except DatabaseError:
            log.warning("an unreadable subscription notification could not be recorded")
        return outcome.outcome(unreadable.kind, unreadable.message, expression=unreadable.where)
    return _receive(body, target)


def _authorized(request: HttpRequest, secret: str) -> bool:
    """The secret from `Authorization: Bearer` or the fhirai header, compared in constant time."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    given = token.strip() if scheme.lower() == "bearer" else request.headers.get(SECRET_HEADER, "")
    return hmac.compare_digest(given.encode(), secret.encode())


class _Unreadable(Exception):
    def __init__(self, kind: tuple[str, int], where: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.where, self.message = kind, where, message


def _body(request: HttpRequest) -> Any:
    """The notification as FHIR JSON (from JSON or XML), None for an empty body (a ping)."""
    try:
        raw = request.body
    except RequestDataTooBig:
        raise _Unreadable(
            TOO_LARGE, "(body)", "the notification is larger than this server accepts"
        ) from None
    if not raw.strip():
        return None
    try:
        return body_read(request)
    except ResourceInvalid as exc:
        where, message = exc.issues[0]
        raise _Unreadable(outcome.INVALID, where, message) from None
    except ValueError as exc:
        raise _Unreadable(UNSUPPORTED_MEDIA, "(body)", str(exc)) from None


def _receive(body: Any, target: str) -> HttpResponse:
    try:
        result = notification_receive(body, source_fetch(), target=target)
    except NotificationInvalid as exc:
        return _issues(400, "invalid", exc.issues)
    except errors.Unavailable as exc:
        log.warning("subscription notification deferred: %s", exc)
        return outcome.outcome(outcome.TRANSIENT, f"cannot fetch from the notifying server now: {exc}")
    except DatabaseError:
        return outcome.outcome(outcome.TRANSIENT, "storage is unavailable; retry later")
    log.info(
        "subscription notification %s: %s %s, %s",
        result.notification,
        result.kind,
        result.subscription or "(classic)",
        result.summary(),
    )
    return _applied(result)


def _issues(status: int, code: str, issues: list[tuple[str, str]]) -> HttpResponse:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": code, "diagnostics": message, "expression": [where]}
            for where, message in issues
        ],
    }
    return HttpResponse(json.dumps(body), status=status, content_type=FHIR_JSON)


def _applied(result: Result) -> HttpResponse:
    """200: the notification is taken. Resources that did not conform are error issues: they are
    recorded and will not improve on a retry, so the server is not asked for one."""
    issues: list[dict[str, Any]] = [
        {
            "severity": "information",
            "code": "informational",
            "diagnostics": f"{result.kind} {result.notification}: {result.summary()}",
        }
    ]
    issues += [
        {"severity": "error", "code": "invalid", "diagnostics": message, "expression": [where]}
        for where, message in result.failures
    ]
    body = {"resourceType": "OperationOutcome", "issue": issues}
    return HttpResponse(json.dumps(body), status=200, content_type=FHIR_JSON)


def source_fetch() -> Fetch:
    """fetch(reference) on the notifying server, its client built on first use (handshakes and
    heartbeats need none). Only the source's own resources are fetched: an absolute reference
    elsewhere is refused, so a notification cannot send fhirai's credentials to another host."""
    base = settings.FHIRAI_FHIR_SUBSCRIPTION_SOURCE_URL.rstrip("/")
    client: list[Callable[[str], dict[str, Any] | None]] = []

    def fetch(reference: str) -> dict[str, Any] | None:
        if not base:
            raise errors.Unavailable("FHIRAI_FHIR_SUBSCRIPTION_SOURCE_URL is not configured")
        if "://" in reference:
            if not reference.startswith(f"{base}/"):
                raise errors.InvalidInput("invalid", "the focus is not on the configured notifying server")
            reference = reference[len(base) + 1 :]
        if not client:
            client.append(_reader(base))
        return client[0](reference)

    return fetch


def _reader(base: str) -> Callable[[str], dict[str, Any] | None]:
    """The write-back client (its credentials) when the source is the upstream; else a plain one."""
    if base == settings.FHIRAI_FHIR_UPSTREAM_URL.rstrip("/"):
        shared = upstream()
        if callable(getattr(shared, "read", None)):
            return shared.read  # type: ignore[attr-defined]
    plain = HttpUpstream(base_url=base, timeout=settings.FHIRAI_FHIR_UPSTREAM_TIMEOUT)
    return plain.read
