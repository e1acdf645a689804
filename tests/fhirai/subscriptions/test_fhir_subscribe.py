"""`manage.py fhir_subscribe` against the test notifier: the Subscription it creates there."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from tests.support.fhir_notifier import TOPIC, FhirNotifier

ENDPOINT = "https://fhirai.hospital.example/fhir-subscription/"


@pytest.fixture
def notifier(settings):
    settings.FHIRAI_FHIR_SUBSCRIPTION_SECRET = "channel-secret"
    with FhirNotifier() as server:
        settings.FHIRAI_FHIR_SUBSCRIPTION_SOURCE_URL = server.url
        yield server


def test_topic_subscription_with_the_backport_profile(notifier, capsys):
    call_command("fhir_subscribe", "--topic", TOPIC, "--endpoint", ENDPOINT, "--heartbeat", "600")
    [(sub, auth)] = notifier.state.created
    assert "created Subscription/" in capsys.readouterr().out and auth == ""
    assert sub["meta"]["profile"][0].endswith("/backport-subscription") and sub["criteria"] == TOPIC
    channel = sub["channel"]
    assert (channel["type"], channel["endpoint"], channel["payload"]) == (
        "rest-hook",
        ENDPOINT,
        "application/fhir+json",
    )
    assert channel["header"] == ["Authorization: Bearer channel-secret"]
    assert channel["_payload"]["extension"][0]["valueCode"] == "full-resource"
    assert channel["extension"][0]["valueUnsignedInt"] == 600


def test_classic_criteria_and_the_upstream_token(notifier, settings):
    settings.FHIRAI_FHIR_UPSTREAM_URL = notifier.url
    settings.FHIRAI_FHIR_UPSTREAM_TOKEN = "upstream-token"
    call_command("fhir_subscribe", "--criteria", "ServiceRequest?status=active", "--endpoint", ENDPOINT)
    [(sub, auth)] = notifier.state.created
    assert sub["criteria"] == "ServiceRequest?status=active" and "meta" not in sub
    assert auth == "Bearer upstream-token"


def test_dry_run_and_no_secret(settings, capsys):
    settings.FHIRAI_FHIR_SUBSCRIPTION_SECRET = "channel-secret"
    call_command("fhir_subscribe", "--topic", TOPIC, "--endpoint", ENDPOINT, "--dry-run")
    assert json.loads(capsys.readouterr().out)["resourceType"] == "Subscription"
    settings.FHIRAI_FHIR_SUBSCRIPTION_SECRET = ""
    with pytest.raises(CommandError):
        call_command("fhir_subscribe", "--topic", TOPIC, "--endpoint", ENDPOINT)
