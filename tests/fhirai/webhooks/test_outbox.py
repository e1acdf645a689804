from __future__ import annotations

import json
import socket
from datetime import timedelta

import pytest
from django.utils import timezone
from standardwebhooks import Webhook

from fhirai.errors import NotFound
from fhirai.webhooks.models import HookReceipt, WebhookDelivery, WebhookDeliveryState, WebhookSubscription
from fhirai.webhooks.outbox import (
    backoff,
    webhook_deliver,
    webhook_emit,
    webhook_replay,
    webhooks_dead,
    webhooks_sweep,
)
from tests.fhirai.webhooks.receiver import Receiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def _subscribe(url: str, events: list[str] | None = None, **fields) -> WebhookSubscription:
    sub = WebhookSubscription(
        name=f"sub-{WebhookSubscription.objects.count()}",
        url=url,
        events=events or ["report.created", "item.failed", "item.completed", "delivery.failed"],
        **fields,
    )
    sub.full_clean()
    sub.save()
    return sub


def _emit() -> WebhookDelivery:
    assert webhook_emit("item.failed", {"item": {"type": "study", "id": 7}, "state": "failed"}) == 1
    return WebhookDelivery.objects.get()


def _due(delivery: WebhookDelivery) -> None:
    """Move the clock to the next attempt instead of waiting for it."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


def test_delivery_is_signed_so_a_standard_webhooks_verifier_accepts_it(receiver):
    sub = _subscribe(receiver.url)
    delivery = _emit()
    webhook_deliver(delivery.pk)
    [request] = receiver.state.requests
    payload = Webhook(sub.secret).verify(request.body, request.headers)
    assert payload["type"] == "item.failed" and payload["data"]["item"] == {"type": "study", "id": 7}
    assert request.headers["webhook-id"] == delivery.message_id and delivery.message_id.startswith("msg_")
    assert request.headers["content-type"] == "application/json"
    delivery.refresh_from_db()
    assert delivery.state == WebhookDeliveryState.DELIVERED and delivery.last_status == 200
    assert delivery.attempts == 1 and delivery.delivered_at is not None


def test_a_forged_secret_does_not_verify(receiver):
    _subscribe(receiver.url)
    webhook_deliver(_emit().pk)
    [request] = receiver.state.requests
    other = WebhookSubscription(name="x", url=receiver.url).secret
    with pytest.raises(Exception, match="(?i)signature"):
        Webhook(other).verify(request.body, request.headers)


def test_a_receiver_that_fails_three_times_then_succeeds_gets_the_event_exactly_once_more(receiver):
    _subscribe(receiver.url)
    receiver.state.fail_next = 3
    delivery = _emit()
    for attempt in range(1, 4):
        before = timezone.now()
        webhook_deliver(delivery.pk)
        delivery.refresh_from_db()
        assert delivery.state == WebhookDeliveryState.PENDING and delivery.attempts == attempt
        assert delivery.last_status == 503
        wait = (delivery.next_attempt_at - before).total_seconds()
        expected = 5 * 6 ** (attempt - 1)
        assert 0.74 * expected <= wait <= 1.26 * expected + 1
        webhook_deliver(delivery.pk)  # not due yet: nothing is sent
        assert len(receiver.state.requests) == attempt
        _due(delivery)
    webhook_deliver(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == WebhookDeliveryState.DELIVERED and delivery.attempts == 4
    webhook_deliver(delivery.pk)  # a duplicate task or a sweep afterwards sends nothing
    assert webhooks_sweep() == 0
    assert len(receiver.state.requests) == 4 and len(receiver.state.successes()) == 1
    assert {r.headers["webhook-id"] for r in receiver.state.requests} == {delivery.message_id}
    assert len({r.body for r in receiver.state.requests}) == 1


def test_a_dead_receiver_ends_in_the_dead_letter_list_and_replay_delivers_with_the_same_id(
    receiver, settings
):
    settings.FHIRAI_WEBHOOK_MAX_ATTEMPTS = 4
    sub = _subscribe(receiver.url)
    receiver.state.always_fail = True
    delivery = _emit()
    for _ in range(4):
        webhook_deliver(delivery.pk)
        _due(delivery)
    delivery.refresh_from_db()
    assert delivery.state == WebhookDeliveryState.DEAD and delivery.attempts == 4
    assert [d.pk for d in webhooks_dead()] == [delivery.pk]
    webhook_deliver(delivery.pk)
    assert webhooks_sweep() == 0 and len(receiver.state.requests) == 4  # dead rows are left alone
    receiver.state.always_fail = False
    assert webhook_replay(delivery.pk) is True
    assert webhook_replay(delivery.pk) is False  # already pending: a second press does nothing
    delivery.refresh_from_db()
    assert delivery.state == WebhookDeliveryState.PENDING and delivery.attempts == 0
    webhook_deliver(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == WebhookDeliveryState.DELIVERED and webhooks_dead() == []
    last = receiver.state.requests[-1]
    assert last.headers["webhook-id"] == delivery.message_id
    Webhook(sub.secret).verify(last.body, last.headers)
    assert {r.headers["webhook-id"] for r in receiver.state.requests} == {delivery.message_id}


def test_replay_of_an_unknown_delivery_is_not_found():
    with pytest.raises(NotFound):
        webhook_replay(987654)


def test_an_unreachable_receiver_is_retried_later():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: connections are refused
    _subscribe(f"http://127.0.0.1:{port}/hook")
    delivery = _emit()
    webhook_deliver(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == WebhookDeliveryState.PENDING and delivery.attempts == 1
    assert delivery.last_status is None and "unreachable" in delivery.last_response


def test_events_and_filters_choose_the_subscriptions(receiver):
    everything = _subscribe(receiver.url)
    reports_of_one_model = _subscribe(receiver.url, ["report.created"], filter={"model": ["ct-lung-quant"]})
    _subscribe(receiver.url, ["report.created"], filter={"source": "OTHERAE"})
    _subscribe(receiver.url, ["report.created"], enabled=False)
    assert (
        webhook_emit("report.created", {"report": "DiagnosticReport/a"}, attrs={"model": "ct-lung-quant"})
        == 2
    )
    assert webhook_emit("report.created", {"report": "DiagnosticReport/b"}, attrs={"model": "other"}) == 1
    assert webhook_emit("item.completed", {"item": {"type": "study", "id": 1}}) == 1
    subs = set(WebhookDelivery.objects.values_list("subscription_id", flat=True))
    assert subs == {everything.pk, reports_of_one_model.pk}


def test_the_same_fact_emitted_twice_is_one_delivery_with_one_id(receiver):
    _subscribe(receiver.url)
    for _ in range(2):
        webhook_emit("report.created", {"report": "DiagnosticReport/a"}, key="DiagnosticReport/a/_history/1")
    assert WebhookDelivery.objects.count() == 1
    webhook_emit("report.created", {"report": "DiagnosticReport/a"}, key="DiagnosticReport/a/_history/2")
    assert WebhookDelivery.objects.values("message_id").distinct().count() == 2


def test_phi_goes_only_to_subscriptions_allowed_it(receiver):
    plain = _subscribe(receiver.url)
    allowed = _subscribe(receiver.url, include_phi=True)
    webhook_emit("item.failed", {"state": "failed"}, phi=lambda: {"patient_name": "Doe^Jane"})
    assert "Doe" not in json.dumps(WebhookDelivery.objects.get(subscription=plain).payload)
    assert WebhookDelivery.objects.get(subscription=allowed).payload["data"]["phi"] == {
        "patient_name": "Doe^Jane"
    }


def test_sweep_resends_due_and_stalled_deliveries_and_prunes_old_receipts(receiver, settings):
    _subscribe(receiver.url)
    delivery = _emit()
    long_ago = timezone.now() - timedelta(seconds=settings.FHIRAI_STALL_SECONDS + 5)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        state=WebhookDeliveryState.SENDING, claimed_at=long_ago
    )
    HookReceipt.objects.create(
        source="engine", webhook_id="msg_old", received_at=timezone.now() - timedelta(days=1)
    )
    HookReceipt.objects.create(source="engine", webhook_id="msg_new", received_at=timezone.now())
    assert webhooks_sweep() == 1
    delivery.refresh_from_db()
    assert delivery.state == WebhookDeliveryState.PENDING
    assert list(HookReceipt.objects.values_list("webhook_id", flat=True)) == ["msg_new"]
    webhook_deliver(delivery.pk)
    assert len(receiver.state.successes()) == 1


def test_backoff_grows_and_is_capped(settings):
    settings.FHIRAI_WEBHOOK_BACKOFF_MAX = 120
    assert 3.75 <= backoff(1) <= 6.25 and 22.5 <= backoff(2) <= 37.5
    assert all(backoff(n) <= 150 for n in range(3, 30))


def test_a_bad_secret_or_event_list_is_refused_on_save():
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        WebhookSubscription(
            name="a", url="http://127.0.0.1/x", events=["report.created"], secret="nope"
        ).full_clean()
    with pytest.raises(ValidationError):
        WebhookSubscription(name="b", url="http://127.0.0.1/x", events=["study.exploded"]).full_clean()
