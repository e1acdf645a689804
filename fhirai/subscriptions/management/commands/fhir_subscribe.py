"""`python manage.py fhir_subscribe`: ask the hospital's FHIR server (FHIRAI_FHIR_SUBSCRIPTION_SOURCE_URL)
to notify fhirai, by creating a Subscription there: channel rest-hook to fhirai's public
/fhir-subscription/ URL, carrying FHIRAI_FHIR_SUBSCRIPTION_SECRET in channel.header, payload
application/fhir+json.

--topic makes a topic-based one (R4 Subscription with the Subscriptions Backport IG profile, the
topic canonical as criteria, payload content full-resource by default); --criteria makes an R4
classic one (e.g. `ServiceRequest?status=active`). --dry-run prints the Subscription instead, for
servers where an administrator creates it."""

from __future__ import annotations

import json
from typing import Any

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
CONTENTS = ("full-resource", "id-only", "empty")


def subscription_resource(
    *,
    endpoint: str,
    secret: str,
    topic: str = "",
    criteria: str = "",
    content: str = "full-resource",
    filters: list[str] | None = None,
    heartbeat: int | None = None,
    reason: str = "fhirai: new and changed patients, imaging orders and studies",
) -> dict[str, Any]:
    """The Subscription to create: Backport IG profile with `topic`, R4 classic with `criteria`."""
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "header": [f"Authorization: Bearer {secret}"],
    }
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": reason,
        "criteria": topic or criteria,
        "channel": channel,
    }
    if not topic:
        return resource
    resource["meta"] = {"profile": [f"{BACKPORT}/backport-subscription"]}
    channel["_payload"] = {
        "extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": content}]
    }
    if heartbeat:
        channel["extension"] = [
            {"url": f"{BACKPORT}/backport-heartbeat-period", "valueUnsignedInt": heartbeat}
        ]
    if filters:
        resource["_criteria"] = {
            "extension": [{"url": f"{BACKPORT}/backport-filter-criteria", "valueString": f} for f in filters]
        }
    return resource


class Command(BaseCommand):
    help = "Create a Subscription on the notifying FHIR server that notifies fhirai's /fhir-subscription/."

    def add_arguments(self, parser: CommandParser) -> None:
        kind = parser.add_mutually_exclusive_group(required=True)
        kind.add_argument("--topic", help="SubscriptionTopic canonical URL (Backport IG, topic-based)")
        kind.add_argument("--criteria", help="R4 classic criteria, e.g. ServiceRequest?status=active")
        parser.add_argument("--endpoint", required=True, help="fhirai's public URL of /fhir-subscription/")
        parser.add_argument(
            "--content", choices=CONTENTS, default="full-resource", help="topic payload content"
        )
        parser.add_argument(
            "--filter", action="append", default=[], help="topic filter criteria (repeatable)"
        )
        parser.add_argument("--heartbeat", type=int, default=None, help="heartbeat period in seconds (topic)")
        parser.add_argument("--source", default="", help="FHIR base to create it on (default: the setting)")
        parser.add_argument(
            "--token", default="", help="bearer token for that server (default: the upstream's)"
        )
        parser.add_argument("--dry-run", action="store_true", help="print the Subscription, create nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        secret = settings.FHIRAI_FHIR_SUBSCRIPTION_SECRET
        if not secret:
            raise CommandError("set FHIRAI_FHIR_SUBSCRIPTION_SECRET first: the endpoint is off without it")
        resource = subscription_resource(
            endpoint=options["endpoint"],
            secret=secret,
            topic=options["topic"] or "",
            criteria=options["criteria"] or "",
            content=options["content"],
            filters=options["filter"],
            heartbeat=options["heartbeat"],
        )
        if options["dry_run"]:
            self.stdout.write(json.dumps(resource, indent=2))
            return
        source = (options["source"] or settings.FHIRAI_FHIR_SUBSCRIPTION_SOURCE_URL).rstrip("/")
        if not source:
            raise CommandError("no server: set FHIRAI_FHIR_SUBSCRIPTION_SOURCE_URL or pass --source")
        self.stdout.write(_create(source, resource, _token(source, options["token"])))


def _token(source: str, given: str) -> str:
    """The upstream's static token is only sent to the upstream itself."""
    if given:
        return given
    return (
        settings.FHIRAI_FHIR_UPSTREAM_TOKEN if source == settings.FHIRAI_FHIR_UPSTREAM_URL.rstrip("/") else ""
    )


def _create(source: str, resource: dict[str, Any], token: str) -> str:
    """POST [base]/Subscription; the server's Location (or id) on success."""
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = requests.post(
            f"{source}/Subscription",
            data=json.dumps(resource),
            headers=headers,
            timeout=settings.FHIRAI_FHIR_UPSTREAM_TIMEOUT,
        )
    except requests.RequestException as exc:
        raise CommandError(f"{source} unreachable: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise CommandError(
            f"{source} refused the Subscription: HTTP {response.status_code} {response.text[:500]}"
        )
    try:
        created = response.json().get("id", "")
    except ValueError:
        created = ""
    return f"created {response.headers.get('Location') or f'Subscription/{created}'}"
