"""Configuration, replay and dead letters through the REST API (what the console does)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from fhirai.api.models import AccessEvent
from fhirai.ingest.models import Message
from fhirai.results.destinations import destinations, fhir_upstream_url, hl7_peers
from fhirai.webhooks.models import WebhookDelivery, WebhookSubscription

pytestmark = pytest.mark.django_db


def test_destinations_are_read_and_set_by_operators_only(as_role, settings):
    settings.FHIRAI_FHIR_UPSTREAM_URL = "http://127.0.0.1:9/fhir"
    operator = as_role("operator")
    [row] = operator.get("/api/destinations").json()
    assert row == {
        "name": "fhir-upstream",
        "kind": "fhir",
        "address": "http://127.0.0.1:9/fhir",
        "enabled": True,
        "origin": "settings",
    }
    put = operator.client.put(
        "/api/destinations/fhir-upstream",
        {"url": "https://ehr.example/fhir/", "enabled": True},
        content_type="application/json",
        headers=operator.headers,
    )
    assert put.status_code == 200 and fhir_upstream_url() == "https://ehr.example/fhir"
    peer = operator.client.put(
        "/api/destinations/mllp/RIS",
        {"host": "ris.example", "port": 2575, "enabled": False},
        content_type="application/json",
        headers=operator.headers,
    )
    assert peer.json()["origin"] == "console" and "RIS" not in hl7_peers()
    assert destinations() == ["fhir-upstream"]
    bad = operator.client.put(
        "/api/destinations/fhir-upstream",
        {"url": "ftp://x"},
        content_type="application/json",
        headers=operator.headers,
    )
    assert bad.status_code == 422
    viewer = as_role("viewer")
    assert viewer.get("/api/destinations").status_code == 403
    assert AccessEvent.objects.filter(action="config.destination").count() == 2


def test_message_retry_and_replay(as_role):
    message = Message.objects.create(
        sender="RIS^HOSP",
        control_id="C1",
        message_type="ADT^A01",
        version="2.5.1",
        codec="utf-8",
        raw=b"MSH|^~\\&|RIS|HOSP|||20240101||ADT^A01|C1|P|2.5.1\r",
        state="failed",
        error="no PID",
        received_at=timezone.now(),
    )
    operator = as_role("operator")
    assert operator.post(f"/api/messages/{message.pk}/replay").status_code == 200
    assert operator.post(f"/api/messages/{message.pk}/retry").status_code == 409  # received again now
    assert as_role("viewer").post(f"/api/messages/{message.pk}/retry").status_code == 403


def test_dead_webhooks_are_listed_and_replayed_once(as_role):
    sub = WebhookSubscription.objects.create(name="engine", url="http://127.0.0.1:9/", events=["item.failed"])
    dead = WebhookDelivery.objects.create(
        subscription=sub,
        event_type="item.failed",
        message_id="msg_1",
        payload={},
        state="dead",
        attempts=10,
        next_attempt_at=timezone.now(),
        created_at=timezone.now(),
    )
    operator = as_role("operator")
    [row] = operator.get("/api/webhooks/dead").json()
    assert row["id"] == dead.pk and row["attempts"] == 10
    assert operator.post(f"/api/webhooks/deliveries/{dead.pk}/replay").status_code == 200
    assert operator.post(f"/api/webhooks/deliveries/{dead.pk}/replay").status_code == 409
    assert operator.get("/api/webhooks/dead").json() == []


def test_allowed_senders_through_the_api(as_role):
    operator = as_role("operator")
    post = operator.client.post(
        "/api/sources/dicom-ae",
        {"value": "CT_ROOM_2", "note": "CT"},
        content_type="application/json",
        headers=operator.headers,
    )
    assert post.status_code == 201 and post.json()["value"] == "CT_ROOM_2"
    net = operator.client.post(
        "/api/sources/mllp-network",
        {"value": "10.1.2.7/24"},
        content_type="application/json",
        headers=operator.headers,
    )
    assert net.json()["value"] == "10.1.2.0/24"
    pinned = operator.client.post(
        "/api/sources/dicom-ae",
        {"value": "PACS@10.20.0.9/24"},
        content_type="application/json",
        headers=operator.headers,
    )
    assert pinned.status_code == 201 and pinned.json()["value"] == "PACS@10.20.0.0/24"
    bad = operator.client.post(
        "/api/sources/dicom-ae",
        {"value": "PACS@pacs.hospital.org"},
        content_type="application/json",
        headers=operator.headers,
    )
    assert bad.status_code == 422  # the schema takes an AE title and an IPv4 address or network
    assert [r["kind"] for r in operator.get("/api/sources").json()] == [
        "dicom-ae",
        "dicom-ae",
        "mllp-network",
    ]
    gone = operator.client.delete(f"/api/sources/{post.json()['id']}", headers=operator.headers)
    assert gone.status_code == 204
    assert as_role("viewer").get("/api/sources").status_code == 403


def test_rejections_and_fhir_reports_are_listed(as_role):
    from fhirai.ingest.receive import input_reject

    input_reject(protocol="dicom", raw=b"", peer="X@1.2.3.4", code="calling-ae-not-allowed", detail="refused")
    page = as_role("viewer").get("/api/rejections", protocol="dicom").json()
    assert page["count"] == 1 and page["items"][0]["code"] == "calling-ae-not-allowed"
    assert as_role("viewer").get("/api/reports").json()["count"] == 0
    assert as_role("viewer").get("/api/reports/1").status_code == 404


def test_webhook_subscriptions_through_the_api(as_role):
    operator = as_role("operator")

    def put(name: str, body: dict):
        return operator.client.put(
            f"/api/webhooks/subscriptions/{name}",
            body,
            content_type="application/json",
            headers=operator.headers,
        )

    created = put(
        "engine",
        {
            "url": "https://engine.example/hooks",
            "events": ["item.failed"],
            "filter": {"model": "ct-lung-quant"},
        },
    )
    assert created.status_code == 201 and created.json()["secret"].startswith("whsec_")
    changed = put(
        "engine", {"url": "https://engine.example/hooks2", "events": ["item.failed", "report.created"]}
    )
    assert changed.status_code == 200 and changed.json()["secret"] == created.json()["secret"]
    assert changed.json()["filter"] == {}
    assert put("engine", {"url": "ftp://x", "events": ["item.failed"]}).status_code == 422
    assert put("engine", {"url": "https://x.example", "events": []}).status_code == 422
    [sub] = operator.get("/api/webhooks/subscriptions").json()
    assert sub["url"] == "https://engine.example/hooks2"
    assert (
        operator.client.delete("/api/webhooks/subscriptions/engine", headers=operator.headers).status_code
        == 204
    )
    assert (
        operator.client.delete("/api/webhooks/subscriptions/engine", headers=operator.headers).status_code
        == 404
    )
    assert as_role("viewer").get("/api/webhooks/subscriptions").status_code == 403


def test_a_pacs_destination_through_the_api(as_role):
    from fhirai.results.destinations import pacs_peers

    operator = as_role("operator")
    put = operator.client.put(
        "/api/destinations/dicom/PACS",
        {"aet": "ORTHANC", "host": "pacs.example", "port": 4242},
        content_type="application/json",
        headers=operator.headers,
    )
    assert put.status_code == 200 and put.json()["address"] == "ORTHANC@pacs.example:4242"
    assert pacs_peers() == {"PACS": ("ORTHANC", "pacs.example", 4242)}
