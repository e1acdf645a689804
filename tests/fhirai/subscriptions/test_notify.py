"""fhirai.subscriptions.notify without HTTP: notification Bundles as the test notifier builds them
(Subscriptions Backport IG on R4, and the R4B SubscriptionStatus form), R4 classic rest-hook
bodies, and a fake fetch that records what it was asked for."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhirai.context.models import Order, Patient
from fhirai.errors import InvalidInput, Unavailable
from fhirai.results.models import FhirResource
from fhirai.subscriptions.models import Notification, Subscription
from fhirai.subscriptions.notify import (
    NotificationInvalid,
    notification_receive,
    ranges_add,
    ranges_remove,
    reference_key,
)
from tests.support.fhir_notifier import FhirNotifier, sample_order, sample_patient

pytestmark = pytest.mark.django_db


class FakeFetch:
    """The notifying server as notify sees it: resources by Type/id, every reference asked for."""

    def __init__(self, notifier: FhirNotifier) -> None:
        self.notifier = notifier
        self.asked: list[str] = []
        self.failure: Exception | None = None

    def __call__(self, reference: str) -> dict[str, Any] | None:
        self.asked.append(reference)
        if self.failure is not None:
            raise self.failure
        key = reference_key(reference) or ""
        return copy.deepcopy(self.notifier.state.resources.get(key))


@pytest.fixture
def notifier():
    server = FhirNotifier()  # only its Bundles are used here: never started
    server.put(sample_patient())
    server.put(sample_order())
    yield server
    server.stop()


@pytest.fixture
def fetch(notifier) -> FakeFetch:
    return FakeFetch(notifier)


def subscription(notifier: FhirNotifier) -> Subscription:
    return Subscription.objects.get(reference=notifier.subscription)


def versions(key: str) -> int:
    rtype, rid = key.split("/")
    return FhirResource.objects.get(resource_type=rtype, rid=rid).version_id


# --- handshake and heartbeat ------------------------------------------------------------------------


def test_handshake_records_the_subscription_as_active(notifier, fetch):
    result = notification_receive(notifier.handshake(), fetch)
    sub = subscription(notifier)
    assert sub.status == "active" and sub.handshake_at is not None and sub.topic == notifier.topic
    row = Notification.objects.get(pk=result.notification)
    assert (row.kind, row.status, row.subscription) == ("handshake", "processed", notifier.subscription)
    assert fetch.asked == []


def test_heartbeat_records_its_time_and_count_and_a_gap_it_reveals(notifier, fetch):
    notification_receive(notifier.handshake(), fetch)
    notification_receive(notifier.event("Patient/pat-1"), fetch)
    notifier.skip(2)  # events 2 and 3 happen but are never sent
    result = notification_receive(notifier.heartbeat(), fetch)
    sub = subscription(notifier)
    assert sub.last_heartbeat_at is not None and sub.events_since_start == 3
    assert sub.highest_event == 3 and sub.missed == [[2, 3]] and sub.missed_count == 2
    assert result.missed == [(2, 3)]
    row = Notification.objects.get(pk=result.notification)
    assert row.kind == "heartbeat" and "missed events 2-3" in row.detail


# --- event notifications ------------------------------------------------------------------------------


def test_id_only_event_fetches_each_focus_in_event_order_and_receives_it(notifier, fetch):
    notification_receive(notifier.handshake(), fetch)
    bundle = notifier.event("Patient/pat-1", "ServiceRequest/sr-1")
    params = bundle["entry"][0]["resource"]["parameter"]
    params[5], params[6] = params[6], params[5]  # events listed out of order
    result = notification_receive(bundle, fetch)
    assert fetch.asked == [f"{notifier.url}/Patient/pat-1", f"{notifier.url}/ServiceRequest/sr-1"]
    assert result.received == ["Patient/pat-1", "ServiceRequest/sr-1"]
    assert Patient.objects.get(resource_id="pat-1").mrn == "MRN-SUB-1"
    order = Order.objects.get(accession="ACC-SUB-1")
    assert order.patient is not None and order.patient.resource_id == "pat-1"
    assert subscription(notifier).highest_event == 2
    row = Notification.objects.get(pk=result.notification)
    assert (row.first_event, row.last_event, row.status) == (1, 2, "processed")
    assert row.resources == ["Patient/pat-1", "ServiceRequest/sr-1"]


def test_full_resource_event_needs_no_fetch(notifier, fetch):
    result = notification_receive(notifier.event("Patient/pat-1", payload="full-resource"), fetch)
    assert fetch.asked == [] and result.received == ["Patient/pat-1"]
    assert FhirResource.objects.filter(resource_type="Patient", rid="pat-1").exists()


def test_additional_context_carried_in_the_bundle_is_received_before_the_focus(notifier, fetch):
    bundle = notifier.event("ServiceRequest/sr-1", payload="full-resource")
    context = {"name": "additional-context", "valueReference": {"reference": f"{notifier.url}/Patient/pat-1"}}
    bundle["entry"][0]["resource"]["parameter"][5]["part"].append(context)
    bundle["entry"].append({"fullUrl": f"{notifier.url}/Patient/pat-1", "resource": sample_patient()})
    result = notification_receive(bundle, fetch)
    assert result.received == ["Patient/pat-1", "ServiceRequest/sr-1"] and fetch.asked == []
    assert Order.objects.get(accession="ACC-SUB-1").patient.resource_id == "pat-1"


def test_empty_payload_event_is_counted_and_nothing_fetched(notifier, fetch):
    result = notification_receive(notifier.event("Patient/pat-1", payload="empty"), fetch)
    assert fetch.asked == [] and result.received == [] and subscription(notifier).highest_event == 1


def test_a_replayed_event_changes_nothing(notifier, fetch):
    bundle = notifier.event("Patient/pat-1")
    notification_receive(bundle, fetch)
    again = notification_receive(copy.deepcopy(bundle), fetch)
    assert again.replayed == [1] and again.received == []
    assert fetch.asked == [f"{notifier.url}/Patient/pat-1"]  # fetched once
    assert versions("Patient/pat-1") == 1
    assert Notification.objects.get(pk=again.notification).status == "processed"


def test_a_late_event_fills_its_gap(notifier, fetch):
    notifier.skip(2)
    notification_receive(notifier.event("ServiceRequest/sr-1"), fetch)  # event 3: 1-2 missed
    assert subscription(notifier).missed == [[1, 2]]
    late = notifier.event("Patient/pat-1")
    params = late["entry"][0]["resource"]["parameter"]
    params[5]["part"][0]["valueString"] = "1"  # a retry of event 1 arriving after event 3
    params[4]["valueString"] = "1"
    result = notification_receive(late, fetch)
    assert result.received == ["Patient/pat-1"]
    sub = subscription(notifier)
    assert sub.missed == [[2, 2]] and sub.missed_count == 1 and sub.highest_event == 3


def test_types_fhirai_does_not_receive_are_skipped_unfetched(notifier, fetch):
    notifier.put({"resourceType": "Observation", "id": "obs-1", "status": "final", "code": {"text": "x"}})
    result = notification_receive(notifier.event("Observation/obs-1"), fetch)
    assert fetch.asked == [] and result.skipped == ["Observation/obs-1 (not a type fhirai receives)"]
    assert subscription(notifier).highest_event == 1


def test_a_focus_gone_at_the_source_is_skipped(notifier, fetch):
    result = notification_receive(notifier.event("Patient/deleted"), fetch)
    assert result.skipped == ["Patient/deleted (gone at the source)"]
    assert Notification.objects.get(pk=result.notification).status == "processed"


def test_source_unavailable_fails_the_notification_without_consuming_the_event(notifier, fetch):
    bundle = notifier.event("Patient/pat-1")
    fetch.failure = Unavailable("upstream unreachable: ConnectionError")
    with pytest.raises(Unavailable):
        notification_receive(bundle, fetch)
    row = Notification.objects.get()
    assert row.status == "failed" and "unreachable" in row.error
    assert subscription(notifier).highest_event == 0
    fetch.failure = None
    assert notification_receive(bundle, fetch).received == ["Patient/pat-1"]  # the retry applies it


def test_a_focus_on_another_server_is_refused_at_its_location(notifier, fetch):
    fetch.failure = InvalidInput("invalid", "the focus is not on the configured notifying server")
    with pytest.raises(NotificationInvalid) as caught:
        notification_receive(notifier.event("Patient/pat-1"), fetch)
    assert caught.value.issues[0][0] == "Bundle.entry[0].resource.parameter[5].part[2]"


def test_a_nonconforming_focus_is_recorded_by_location_without_its_value(notifier, fetch):
    notifier.put({**sample_patient("bad-1"), "birthDate": "not-a-date"})
    result = notification_receive(
        notifier.event("Patient/bad-1", "Patient/pat-1", payload="full-resource"), fetch
    )
    assert result.received == ["Patient/pat-1"]
    assert result.failures and result.failures[0][0] == "Bundle.entry[1].resource.Patient.birthDate"
    row = Notification.objects.get(pk=result.notification)
    assert row.status == "failed" and "Patient.birthDate" in row.error and "not-a-date" not in row.error
    assert subscription(notifier).highest_event == 2  # consumed: a retry would not change it


def test_r4b_subscription_status_form(fetch):
    with FhirNotifier(form="r4b") as r4b:
        r4b.put(sample_patient())
        fetch.notifier = r4b
        notification_receive(r4b.handshake(), fetch)
        result = notification_receive(r4b.event("Patient/pat-1"), fetch)
        assert result.kind == "event-notification" and result.received == ["Patient/pat-1"]
        assert Subscription.objects.get(reference=r4b.subscription).highest_event == 1


@pytest.mark.parametrize(
    "value",
    [{"valueString": "4"}, {"valueInteger64": "4"}, {"valueUnsignedInt": 4}, {"valueDecimal": 4.0}],
)
def test_events_since_in_every_form_a_server_sends(notifier, fetch, value):
    bundle = notifier.heartbeat()
    param = bundle["entry"][0]["resource"]["parameter"][4]
    param.pop("valueString")
    param.update(value)
    notification_receive(bundle, fetch)
    assert subscription(notifier).events_since_start == 4


# --- malformed notifications --------------------------------------------------------------------------


def _broken(bundle: dict[str, Any], change) -> dict[str, Any]:  # noqa: ANN001
    change(bundle)
    return bundle


@pytest.mark.parametrize(
    ("change", "location"),
    [
        (lambda b: b["entry"][0].update(resource={"resourceType": "Patient"}), "Bundle.entry[0].resource"),
        (lambda b: b.update(type="transaction"), "Bundle.type"),
        (lambda b: b.update(entry=[]), "Bundle.entry"),
        (
            lambda b: b["entry"][0]["resource"]["parameter"][3].update(valueCode="gossip"),
            "Bundle.entry[0].resource.parameter[3]",
        ),
        (
            lambda b: b["entry"][0]["resource"]["parameter"][4].update(valueString="many"),
            "Bundle.entry[0].resource.parameter[4]",
        ),
        (
            lambda b: b["entry"][0]["resource"]["parameter"][5]["part"].pop(0),
            "Bundle.entry[0].resource.parameter[5]",
        ),
        (
            lambda b: b["entry"][0]["resource"]["parameter"].pop(0),
            "Bundle.entry[0].resource.parameter",
        ),
    ],
)
def test_malformed_notifications_name_the_location_and_are_recorded(notifier, fetch, change, location):
    bundle = _broken(notifier.event("Patient/pat-1"), change)
    with pytest.raises(NotificationInvalid) as caught:
        notification_receive(bundle, fetch)
    assert caught.value.issues[0][0] == location
    row = Notification.objects.get()
    assert row.status == "failed" and location in row.error
    assert fetch.asked == [] and not FhirResource.objects.exists()


# --- R4 classic rest-hook -----------------------------------------------------------------------------


def test_classic_ping_is_recorded(fetch):
    result = notification_receive(None, fetch)
    row = Notification.objects.get(pk=result.notification)
    assert (row.kind, row.status) == ("ping", "processed") and fetch.asked == []


def test_classic_payload_is_received(fetch):
    result = notification_receive(sample_patient(), fetch, target="Patient/pat-1")
    assert result.kind == "rest-hook" and result.received == ["Patient/pat-1"]
    with pytest.raises(NotificationInvalid) as wrong_id:
        notification_receive(sample_patient(), fetch, target="Patient/other")
    assert wrong_id.value.issues[0][0] == "Patient.id"
    with pytest.raises(NotificationInvalid) as invalid:
        notification_receive({**sample_patient(), "birthDate": "not-a-date"}, fetch)
    assert invalid.value.issues[0][0] == "Patient.birthDate"


# --- the event counter's ranges ---------------------------------------------------------------------


def test_ranges_merge_and_split():
    assert ranges_add([[1, 2]], 3, 5) == [[1, 5]]
    assert ranges_add([[7, 9]], 1, 2) == [[1, 2], [7, 9]]
    assert ranges_remove([[1, 5]], 3) == [[1, 2], [4, 5]]
    assert ranges_remove([[3, 3]], 3) == []
    assert reference_key("https://ehr.example/fhir/Patient/p-1/_history/3") == "Patient/p-1"
    assert reference_key("Subscription") is None


# --- the console -------------------------------------------------------------------------------------


def test_the_console_lists_subscriptions_and_notifications_read_only(admin_client, notifier, fetch):
    notification_receive(notifier.handshake(), fetch)
    notifier.skip(1)
    notification_receive(notifier.heartbeat(), fetch)
    subs = admin_client.get("/admin/subscriptions/subscription/")
    assert subs.status_code == 200 and notifier.subscription in subs.content.decode()
    rows = admin_client.get("/admin/subscriptions/notification/")
    assert rows.status_code == 200 and "heartbeat" in rows.content.decode()
    row = Notification.objects.first()
    assert admin_client.get(f"/admin/subscriptions/notification/{row.pk}/change/").status_code == 200
    assert admin_client.get("/admin/subscriptions/notification/add/").status_code == 403
