"""A small notifying FHIR server for the Subscriptions tests, on a real socket.

It plays the hospital's FHIR server in a topic-based subscription (Subscriptions Backport IG
STU1.1, R4 form): it holds resources and answers `GET [base]/Type/id` (so fhirai can fetch the
focus of an id-only notification) and `POST [base]/Type` (the Subscription fhirai asks for),
counts its events, and SENDS notifications by POSTing them to
a URL with the channel header its Subscription would carry. The notification Bundles are built
from the IG's rules: a `history` Bundle whose first entry is the SubscriptionStatus as
`Parameters` (or the R4B `SubscriptionStatus` resource), then one entry per focus with the
resource (full-resource) or only its fullUrl and request (id-only); none for empty payloads.

Why not a real server: HAPI FHIR and the like need downloads this machine cannot make, and what
fhirai relies on is exactly this much of the wire."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from tests.support.json_http import JsonHandler

BACKPORT_STATUS = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
)
TOPIC = "http://example.org/fhir/SubscriptionTopic/imaging-orders"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NotifierState:
    """What the server holds and what it was asked: resources by Type/id, every GET path, every
    resource created by POST."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.reads: list[str] = []
        self.read_auth: list[str] = []
        self.fail_reads_with: int | None = None
        self.created: list[tuple[dict[str, Any], str]] = []  # (resource POSTed, its Authorization)
        self.lock = threading.Lock()


def _handler(state: NotifierState, prefix: str) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def do_GET(self) -> None:  # noqa: N802
            key = self.path.split("?", 1)[0].removeprefix(prefix).strip("/")
            with state.lock:
                state.reads.append(key)
                state.read_auth.append(self.headers.get("Authorization", ""))
                failing, resource = state.fail_reads_with, state.resources.get(key)
            if failing:
                self._send(failing, {"resourceType": "OperationOutcome", "issue": [{"code": "transient"}]})
            elif resource is None:
                self._send(404, {"resourceType": "OperationOutcome", "issue": [{"code": "not-found"}]})
            else:
                self._send(200, resource)

        def do_POST(self) -> None:  # noqa: N802 - create, for the Subscription fhir_subscribe makes
            rtype = self.path.split("?", 1)[0].removeprefix(prefix).strip("/")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if body.get("resourceType") != rtype or "/" in rtype:
                self._send(400, {"resourceType": "OperationOutcome", "issue": [{"code": "invalid"}]})
                return
            body["id"] = uuid.uuid4().hex
            with state.lock:
                state.resources[f"{rtype}/{body['id']}"] = body
                state.created.append((body, self.headers.get("Authorization", "")))
            self.send_response(201)
            self.send_header("Location", f"{rtype}/{body['id']}/_history/1")
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


class FhirNotifier:
    """Start with `with FhirNotifier() as server:`; `server.url` is its FHIR base. Builds and sends
    the notifications of one subscription, `server.subscription`, on `topic`."""

    def __init__(self, *, topic: str = TOPIC, subscription_id: str = "sub-1", form: str = "r4") -> None:
        self.state = NotifierState()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state, "/fhir"))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"
        self.topic, self.form = topic, form
        self.subscription = f"{self.url}/Subscription/{subscription_id}"
        self.events = 0  # events since subscription start
        self._serving = False

    def __enter__(self) -> FhirNotifier:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self._serving = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering (the socket closes: connection refused); sending still works."""
        if self._serving:
            self.httpd.shutdown()
            self._serving = False
        self.httpd.server_close()

    # --- the resources it holds ---------------------------------------------------------------

    def put(self, resource: dict[str, Any]) -> str:
        """Hold (create or change) a resource; returns its Type/id."""
        key = f"{resource['resourceType']}/{resource['id']}"
        with self.state.lock:
            self.state.resources[key] = resource
        return key

    @property
    def reads(self) -> list[str]:
        with self.state.lock:
            return list(self.state.reads)

    # --- notifications --------------------------------------------------------------------------

    def handshake(self) -> dict[str, Any]:
        return self._bundle("handshake", status="requested", events=[])

    def heartbeat(self) -> dict[str, Any]:
        return self._bundle("heartbeat", events=[])

    def skip(self, count: int = 1) -> None:
        """Events that happen but are never sent (a lost notification)."""
        self.events += count

    def event(self, *keys: str, payload: str = "id-only") -> dict[str, Any]:
        """An event-notification with one new event per focus Type/id, numbered on from the last."""
        events = []
        for key in keys:
            self.events += 1
            events.append((self.events, key))
        return self._bundle("event-notification", events=events, payload=payload)

    def send(self, endpoint: str, notification: dict[str, Any] | None, *, secret: str) -> requests.Response:
        """POST a notification as the rest-hook channel would, with the channel header."""
        headers = {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {secret}"}
        data = b"" if notification is None else json.dumps(notification).encode()
        return requests.post(endpoint, data=data, headers=headers, timeout=30)

    # --- building the Bundle --------------------------------------------------------------------

    def _bundle(
        self, kind: str, *, events: list[tuple[int, str]], status: str = "active", payload: str = "id-only"
    ) -> dict[str, Any]:
        focus = payload != "empty"
        status_resource = (
            self._parameters(kind, status, events, focus)
            if self.form == "r4"
            else self._subscription_status(kind, status, events, focus)
        )
        entries: list[dict[str, Any]] = [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": status_resource,
                "request": {"method": "GET", "url": f"{self.subscription}/$status"},
                "response": {"status": "200"},
            }
        ]
        if focus:
            entries += [self._entry(key, payload) for _, key in events]
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "history",
            "timestamp": _now(),
            "entry": entries,
        }

    def _entry(self, key: str, payload: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "fullUrl": f"{self.url}/{key}",
            "request": {"method": "PUT", "url": key},
            "response": {"status": "200"},
        }
        if payload == "full-resource":
            with self.state.lock:
                entry["resource"] = self.state.resources[key]
        return entry

    def _parameters(
        self, kind: str, status: str, events: list[tuple[int, str]], focus: bool
    ) -> dict[str, Any]:
        params: list[dict[str, Any]] = [
            {"name": "subscription", "valueReference": {"reference": self.subscription}},
            {"name": "topic", "valueCanonical": self.topic},
            {"name": "status", "valueCode": status},
            {"name": "type", "valueCode": kind},
            {"name": "events-since-subscription-start", "valueString": str(self.events)},
        ]
        for number, key in events:
            parts: list[dict[str, Any]] = [
                {"name": "event-number", "valueString": str(number)},
                {"name": "timestamp", "valueInstant": _now()},
            ]
            if focus:
                parts.append({"name": "focus", "valueReference": {"reference": f"{self.url}/{key}"}})
            params.append({"name": "notification-event", "part": parts})
        return {
            "resourceType": "Parameters",
            "id": str(uuid.uuid4()),
            "meta": {"profile": [BACKPORT_STATUS]},
            "parameter": params,
        }

    def _subscription_status(
        self, kind: str, status: str, events: list[tuple[int, str]], focus: bool
    ) -> dict[str, Any]:
        """The R4B form: a SubscriptionStatus resource, integer64 counters as JSON strings."""
        return {
            "resourceType": "SubscriptionStatus",
            "id": str(uuid.uuid4()),
            "status": status,
            "type": kind,
            "eventsSinceSubscriptionStart": str(self.events),
            "subscription": {"reference": self.subscription},
            "topic": self.topic,
            "notificationEvent": [
                {
                    "eventNumber": str(number),
                    "timestamp": _now(),
                    **({"focus": {"reference": f"{self.url}/{key}"}} if focus else {}),
                }
                for number, key in events
            ],
        }


def sample_patient(rid: str = "pat-1", mrn: str = "MRN-SUB-1") -> dict[str, Any]:
    """A Patient the way an EHR holds it: MR identifier, name, sex, birth date."""
    return {
        "resourceType": "Patient",
        "id": rid,
        "identifier": [
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                },
                "system": "urn:oid:1.2.826.0.1.3680043.10.1",
                "value": mrn,
            }
        ],
        "name": [{"use": "official", "family": "Notified", "given": ["Sub"]}],
        "gender": "female",
        "birthDate": "1970-01-02",
    }


def sample_order(rid: str = "sr-1", patient: str = "pat-1", accession: str = "ACC-SUB-1") -> dict[str, Any]:
    """An imaging ServiceRequest keyed by its accession (identifier type ACSN)."""
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "identifier": [
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
                },
                "system": "urn:oid:1.2.826.0.1.3680043.10.2",
                "value": accession,
            }
        ],
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}]},
        "subject": {"reference": f"Patient/{patient}"},
    }
