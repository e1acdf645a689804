"""/fhir-subscription/ over HTTP. The round trip runs on real sockets both ways: fhirai's app on
pytest-django's live server, and a small notifying FHIR server (tests/support/fhir_notifier.py)
that sends the handshake, event notifications and heartbeats of a topic-based subscription and
answers the GETs fhirai makes for id-only focus resources. The other checks use Django's test
client."""

from __future__ import annotations

import json

import pytest

from fhirai.context.models import Order, Patient
from fhirai.results.models import FhirResource
from fhirai.subscriptions.models import Notification, Subscription
from tests.support.fhir_notifier import FhirNotifier, sample_order, sample_patient

SECRET = "s3cret-channel-header"
FHIR = "application/fhir+json"


@pytest.fixture
def enabled(settings):
    settings.FHIRAI_FHIR_SUBSCRIPTION_SECRET = SECRET
    return settings


@pytest.fixture
def notifier(enabled):
    with FhirNotifier() as server:
        server.put(sample_patient())
        server.put(sample_order())
        enabled.FHIRAI_FHIR_SUBSCRIPTION_SOURCE_URL = server.url
        yield server


def stored(key: str) -> FhirResource | None:
    rtype, rid = key.split("/")
    return FhirResource.objects.filter(resource_type=rtype, rid=rid).first()


def post(client, body, *, secret: str = SECRET, content_type: str = FHIR, **headers):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(
        "/fhir-subscription/",
        data=data,
        content_type=content_type,
        HTTP_AUTHORIZATION=f"Bearer {secret}",
        **headers,
    )


# --- the round trip on real sockets -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_handshake_event_and_heartbeat_round_trip(live_server, notifier):
    endpoint = f"{live_server.url}/fhir-subscription/"

    handshake = notifier.send(endpoint, notifier.handshake(), secret=SECRET)
    assert handshake.status_code == 200, handshake.text
    assert Subscription.objects.get(reference=notifier.subscription).status == "active"

    event = notifier.send(endpoint, notifier.event("Patient/pat-1", "ServiceRequest/sr-1"), secret=SECRET)
    assert event.status_code == 200, event.text
    assert event.json()["resourceType"] == "OperationOutcome"
    assert notifier.reads == ["Patient/pat-1", "ServiceRequest/sr-1"]  # fhirai fetched each focus
    assert stored("Patient/pat-1") is not None and stored("ServiceRequest/sr-1") is not None
    assert Order.objects.get(accession="ACC-SUB-1").patient == Patient.objects.get(resource_id="pat-1")

    heartbeat = notifier.send(endpoint, notifier.heartbeat(), secret=SECRET)
    assert heartbeat.status_code == 200, heartbeat.text
    sub = Subscription.objects.get(reference=notifier.subscription)
    assert sub.last_heartbeat_at is not None and sub.events_since_start == 2
    assert sub.highest_event == 2 and sub.missed == []
    kinds = list(Notification.objects.order_by("id").values_list("kind", "status"))
    assert kinds == [
        ("handshake", "processed"),
        ("event-notification", "processed"),
        ("heartbeat", "processed"),
    ]


@pytest.mark.django_db(transaction=True)
def test_replaying_an_event_is_idempotent(live_server, notifier):
    endpoint = f"{live_server.url}/fhir-subscription/"
    bundle = notifier.event("Patient/pat-1")
    assert notifier.send(endpoint, bundle, secret=SECRET).status_code == 200
    again = notifier.send(endpoint, bundle, secret=SECRET)  # the server retries after a lost answer
    assert again.status_code == 200 and "already applied" in again.json()["issue"][0]["diagnostics"]
    assert notifier.reads == ["Patient/pat-1"] and stored("Patient/pat-1").version_id == 1


@pytest.mark.django_db(transaction=True)
def test_full_resource_payload_is_received_without_fetching(live_server, notifier):
    endpoint = f"{live_server.url}/fhir-subscription/"
    bundle = notifier.event("Patient/pat-1", "ServiceRequest/sr-1", payload="full-resource")
    assert notifier.send(endpoint, bundle, secret=SECRET).status_code == 200
    assert notifier.reads == [] and stored("ServiceRequest/sr-1") is not None


@pytest.mark.django_db(transaction=True)
def test_notifier_failing_during_an_id_only_fetch_is_a_503_and_the_retry_applies_it(live_server, notifier):
    endpoint = f"{live_server.url}/fhir-subscription/"
    bundle = notifier.event("Patient/pat-1")
    notifier.state.fail_reads_with = 503
    busy = notifier.send(endpoint, bundle, secret=SECRET)
    assert busy.status_code == 503 and busy.headers["Retry-After"]
    assert busy.json()["issue"][0]["code"] == "transient"
    assert stored("Patient/pat-1") is None
    assert Subscription.objects.get(reference=notifier.subscription).highest_event == 0
    notifier.state.fail_reads_with = None
    retried = notifier.send(endpoint, bundle, secret=SECRET)  # the server retries the same notification
    assert retried.status_code == 200 and stored("Patient/pat-1") is not None
    statuses = list(Notification.objects.order_by("id").values_list("status", flat=True))
    assert statuses == ["failed", "processed"]


@pytest.mark.django_db(transaction=True)
def test_notifier_down_during_an_id_only_fetch_is_a_503(live_server, notifier):
    endpoint = f"{live_server.url}/fhir-subscription/"
    notifier.stop()  # not even listening: connection refused; it can still send
    down = notifier.send(endpoint, notifier.event("ServiceRequest/sr-1"), secret=SECRET)
    assert down.status_code == 503 and down.headers["Retry-After"]
    row = Notification.objects.get()
    assert row.status == "failed" and "unreachable" in row.error
    assert stored("ServiceRequest/sr-1") is None


@pytest.mark.django_db(transaction=True)
def test_the_upstream_client_and_its_credentials_read_when_the_source_is_the_upstream(
    live_server, notifier, enabled
):
    enabled.FHIRAI_FHIR_UPSTREAM_URL = notifier.url
    enabled.FHIRAI_FHIR_UPSTREAM_TOKEN = "upstream-token"
    endpoint = f"{live_server.url}/fhir-subscription/"
    assert notifier.send(endpoint, notifier.event("Patient/pat-1"), secret=SECRET).status_code == 200
    assert notifier.state.read_auth == ["Bearer upstream-token"]


# --- the endpoint's answers (Django test client) -------------------------------------------------------


@pytest.mark.django_db
def test_disabled_without_a_secret(client, settings):
    settings.FHIRAI_FHIR_SUBSCRIPTION_SECRET = ""
    response = post(client, {"resourceType": "Bundle"})
    assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.django_db
def test_post_only(client, enabled):
    response = client.get("/fhir-subscription/", HTTP_AUTHORIZATION=f"Bearer {SECRET}")
    assert response.status_code == 405 and response["Allow"] == "POST"
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.django_db
def test_bad_secret_is_401_and_nothing_is_recorded(client, enabled):
    response = post(client, None, secret="wrong")
    assert response.status_code == 401 and response.json()["issue"][0]["code"] == "security"
    no_header = client.post("/fhir-subscription/", data="", content_type=FHIR)
    assert no_header.status_code == 401
    assert not Notification.objects.exists()


@pytest.mark.django_db
def test_the_fhirai_header_carries_the_secret_too(client, enabled):
    response = client.post(
        "/fhir-subscription/", data="", content_type=FHIR, HTTP_X_FHIRAI_SUBSCRIPTION_SECRET=SECRET
    )
    assert response.status_code == 200
    assert Notification.objects.get().kind == "ping"


@pytest.mark.django_db
def test_malformed_bundle_is_400_with_the_location(client, enabled):
    with FhirNotifier() as server:
        bundle = server.event("Patient/pat-1")
    bundle["entry"][0]["resource"]["parameter"][5]["part"][0]["valueString"] = "minus one"
    response = post(client, bundle)
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[0].resource.parameter[5].part[0]"]
    assert Notification.objects.get().status == "failed"


@pytest.mark.django_db
def test_a_body_that_is_not_json_is_400_and_recorded(client, enabled):
    response = post(client, "{not json")
    assert response.status_code == 400 and response.json()["issue"][0]["expression"] == ["(body)"]
    row = Notification.objects.get()
    assert (row.kind, row.status) == ("unreadable", "failed")
    assert post(client, "x", content_type="text/plain").status_code == 415


@pytest.mark.django_db
def test_classic_rest_hook_put_to_type_and_id(client, enabled):
    response = client.put(
        "/fhir-subscription/Patient/pat-1",
        data=json.dumps(sample_patient()),
        content_type=FHIR,
        HTTP_AUTHORIZATION=f"Bearer {SECRET}",
    )
    assert response.status_code == 200 and stored("Patient/pat-1") is not None
    posted = post(client, sample_order())  # or POSTed to the endpoint itself
    assert posted.status_code == 200 and stored("ServiceRequest/sr-1") is not None
    invalid = post(client, {**sample_patient("pat-2"), "birthDate": "not-a-date"})
    assert invalid.status_code == 400 and invalid.json()["issue"][0]["expression"] == ["Patient.birthDate"]
    assert "not-a-date" not in invalid.content.decode()
