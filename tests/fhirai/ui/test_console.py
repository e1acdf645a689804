"""The console's pages with the Django test client on a real pipeline run (CT phantom): login,
roles and PHI, audited views and searches, retry after fixing a destination in the console,
replay, configuration checked on save. The browser tests (tests/e2e/test_console_browser.py)
drive the same pages in chromium against the running product."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from fhirai.api.models import AccessEvent
from fhirai.audit.models import TimelineEvent
from fhirai.ingest.models import Message, Study, StudyState
from fhirai.results.destinations import destination_list, destinations, fhir_upstream_url
from fhirai.results.models import Delivery, DeliveryState
from fhirai.results.writeback import delivery_attempt
from fhirai.routing.models import ModelRecord
from tests.support import pipeline
from tests.support.fhir_upstream import FhirUpstream

pytestmark = pytest.mark.django_db
NAME_PARTS = ("Testperson", "Alma")


def login(role: str) -> Client:
    user = User.objects.create_user(f"{role}-user", password="pw-for-tests-only")
    if role == "superuser":
        user.is_superuser = True
        user.save()
    else:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    client = Client()
    assert client.login(username=user.username, password="pw-for-tests-only")
    return client


@pytest.fixture
def upstream(settings):
    with FhirUpstream() as up:
        settings.FHIRAI_FHIR_UPSTREAM_URL = up.url
        yield up


@pytest.fixture
def not_found_server():
    """An HTTP server that answers 404 to everything: a FHIR base URL with a wrong path."""

    class NotFound(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/nowhere/fhir"
    server.shutdown()
    server.server_close()


@pytest.fixture
def named_study(phantom, settings, blob_dir):
    """A phantom study whose patient has a name we can look for on every page."""
    pipeline.receive(phantom)
    Study.objects.update(patient_name="Testperson^Alma", accession_number="ACC-42")
    return Study.objects.get()


def test_every_page_asks_for_a_login(client):
    for path in ("/", "/items/", "/items/study/1/", "/config/", "/audit/", "/webhooks/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next=")
    page = client.get("/login/").content.decode()
    assert "<form" in page and 'name="password"' in page


def test_a_user_without_a_role_is_refused(db):
    User.objects.create_user("nobody", password="pw-for-tests-only")
    client = Client()
    client.login(username="nobody", password="pw-for-tests-only")
    response = client.get("/items/")
    assert response.status_code == 403 and "no console role" in response.content.decode()


def test_viewer_sees_pseudonyms_only_and_cannot_search_by_name(named_study):
    viewer = login("viewer")
    pages = [
        viewer.get("/items/?kind=study").content.decode(),
        viewer.get(f"/items/study/{named_study.pk}/").content.decode(),
        viewer.get(f"/items/?kind=study&name={NAME_PARTS[0]}").content.decode(),
    ]
    for page in pages:
        for secret in (*NAME_PARTS, named_study.patient_id, "ACC-42", named_study.study_uid):
            assert secret not in page
    assert "may not search by name" in pages[2]
    assert f"study {named_study.pk}" in pages[2]  # the refused filter is dropped, not applied
    assert viewer.get("/config/").status_code == 403
    assert viewer.get("/audit/").status_code == 403
    assert viewer.post(f"/items/study/{named_study.pk}/replay").status_code == 403
    assert not AccessEvent.objects.exists()  # nothing identified was shown


def test_operator_sees_identified_data_and_each_view_and_search_is_audited(named_study):
    operator = login("operator")
    found = operator.get("/items/?kind=study&name=testperson").content.decode()
    assert "Alma Testperson" in found
    missed = operator.get("/items/?kind=study&mrn=NOT-THIS-ONE").content.decode()
    assert "nothing matches" in missed
    page = operator.get(f"/items/study/{named_study.pk}/").content.decode()
    assert "Alma Testperson" in page and "ACC-42" in page
    actions = list(AccessEvent.objects.order_by("id").values_list("action", "detail"))
    assert actions[0] == ("study.search", "console; searched by name")
    assert ("study.view", "console") in actions
    assert all("Testperson" not in d and "ACC-42" not in d for _, d in actions)
    auditor = login("auditor")
    log = auditor.get("/audit/").content.decode()
    assert "user:operator-user" in log and "study.search" in log


def test_fixing_the_destination_in_the_console_then_retry_completes_the_study(
    phantom, settings, blob_dir, upstream, not_found_server
):
    settings.FHIRAI_FHIR_UPSTREAM_URL = not_found_server  # refused: 404
    study = pipeline.run_all(phantom, settings)
    delivery = Delivery.objects.get()
    delivery_attempt(delivery.pk)
    study.refresh_from_db()
    assert study.state == StudyState.FAILED and "refused" in study.error
    operator = login("operator")
    failed = operator.get("/items/?kind=study&state=failed").content.decode()
    assert f"/items/study/{study.pk}/" in failed
    page = operator.get(f"/items/study/{study.pk}/").content.decode()
    assert "refused" in page and ">Retry<" in page

    bad = operator.post(
        "/config/destinations", {"name": "fhir-upstream", "address": "ftp://x", "enabled": "on"}, follow=True
    )
    assert "is not an http or https URL" in bad.content.decode()
    assert fhir_upstream_url() == not_found_server
    operator.post("/config/destinations", {"name": "fhir-upstream", "address": upstream.url, "enabled": "on"})
    assert fhir_upstream_url() == upstream.url
    [view] = destination_list()
    assert view.origin == "settings, changed in the console" and view.updated_by == "user:operator-user"

    retried = operator.post(f"/items/study/{study.pk}/retry", follow=True).content.decode()
    assert "retry by user:operator-user" in retried
    assert Delivery.objects.get().state == DeliveryState.PENDING
    delivery_attempt(delivery.pk)  # what the dispatched task runs
    assert Study.objects.get(pk=study.pk).state == StudyState.WRITTEN_BACK
    assert upstream.state.all("DiagnosticReport")
    from fhirai.results.models import DeliveryAttempt

    assert list(DeliveryAttempt.objects.values_list("number", "outcome", "status")) == [
        (1, "refused", 404),
        (2, "delivered", 200),
    ]
    done = operator.get(f"/items/study/{study.pk}/").content.decode()
    assert "2 attempt(s)" in done and "refused" in done and "delivered" in done
    again = operator.post(f"/items/study/{study.pk}/retry", follow=True).content.decode()
    assert "not failed: nothing to retry" in again
    assert AccessEvent.objects.filter(action="config.destination").exists()
    assert AccessEvent.objects.filter(action="study.retry", item_ids=[study.pk]).count() == 1


def test_switching_a_destination_off_and_resetting_it(settings, db):
    settings.FHIRAI_FHIR_UPSTREAM_URL = "http://127.0.0.1:9/fhir"
    settings.FHIRAI_HL7_PEERS = {"EHR": ("127.0.0.1", 9)}
    admin = login("superuser")
    admin.post("/config/destinations", {"name": "mllp:EHR", "address": "127.0.0.1:9"})  # unchecked: off
    assert destinations() == ["fhir-upstream"]
    admin.post("/config/destinations", {"name": "mllp:RIS", "address": "ris.example:2575", "enabled": "on"})
    assert destinations() == ["fhir-upstream", "mllp:RIS"]
    bad = admin.post("/config/destinations", {"name": "mllp:RIS", "address": "ris:99999"}, follow=True)
    assert "port from 1 to 65535" in bad.content.decode()
    admin.post("/config/destinations/action", {"name": "mllp:EHR", "action": "reset"})
    assert destinations() == ["fhir-upstream", "mllp:EHR", "mllp:RIS"]
    probe = admin.post("/config/destinations/action", {"name": "mllp:EHR", "action": "test"}, follow=True)
    assert "cannot connect" in probe.content.decode()


def test_replay_opens_a_new_revision_once(phantom, settings, blob_dir, upstream):
    study = pipeline.run_all(phantom, settings)
    delivery_attempt(Delivery.objects.get().pk)
    assert Study.objects.get(pk=study.pk).state == StudyState.WRITTEN_BACK
    admin = login("superuser")
    first = admin.post(f"/items/study/{study.pk}/replay", follow=True).content.decode()
    assert "revision 2 through the pipeline" in first
    second = admin.post(f"/items/study/{study.pk}/replay", follow=True).content.decode()
    assert "can be replayed" in second
    study.refresh_from_db()
    assert (study.state, study.revision) == (StudyState.COMPLETE, 2)
    assert TimelineEvent.objects.filter(item_id=study.pk, event="replayed").count() == 1


def test_failed_hl7_message_retry_and_replay(db):
    raw = "MSH|^~\\&|RIS|HOSP|FHIRAI|HOSP|20240101120000||ADT^A01|C9|P|2.5.1\rPID|1||\r"
    message = Message.objects.create(
        sender="RIS^HOSP",
        control_id="C9",
        message_type="ADT^A01",
        version="2.5.1",
        codec="utf-8",
        raw=raw.encode(),
        state="failed",
        error="PID-3 carries no patient identifier",
        received_at="2026-01-01T00:00:00Z",
    )
    operator = login("operator")
    page = operator.get(f"/items/message/{message.pk}/").content.decode()
    assert "PID-3 carries no patient identifier" in page
    operator.post(f"/items/message/{message.pk}/retry")
    message.refresh_from_db()
    assert message.state == "received"
    refused = operator.post(f"/items/message/{message.pk}/replay", follow=True).content.decode()
    assert "has not been applied yet" in refused


def test_bulk_retry_retries_each_failed_match_once(phantom, settings, blob_dir, upstream):
    upstream.state.fail_with = 422
    study = pipeline.run_all(phantom, settings)
    delivery_attempt(Delivery.objects.get().pk)
    assert Study.objects.get(pk=study.pk).state == StudyState.FAILED
    upstream.state.fail_with = None
    operator = login("operator")
    done = operator.post("/items/retry-failed", {"kind": "study", "state": "failed"}, follow=True)
    assert "1 failed study(s) retried" in done.content.decode()
    again = operator.post("/items/retry-failed", {"kind": "study"}, follow=True)
    assert "0 failed study(s) retried" in again.content.decode()


def test_models_are_switched_on_and_off_in_the_console(db):
    pipeline.ensure_reference_model()
    model = ModelRecord.objects.order_by("id").first()
    operator = login("operator")
    assert model.name in operator.get("/config/").content.decode()
    operator.post(f"/config/models/{model.pk}", {"enabled": "0"})
    model.refresh_from_db()
    assert not model.enabled


def test_a_webhook_subscription_is_checked_on_save(db):
    admin = login("superuser")
    bad = admin.post(
        "/config/webhooks/new",
        {"name": "engine", "url": "not a url", "events": ["item.failed"], "filter": "{"},
    )
    page = bad.content.decode()
    assert bad.status_code == 200 and "Enter a valid URL" in page and "not JSON" in page
    ok = admin.post(
        "/config/webhooks/new",
        {
            "name": "engine",
            "url": "http://127.0.0.1:9/hook",
            "events": ["item.failed"],
            "filter": '{"model": "ct-lung"}',
        },
    )
    assert ok.status_code == 302
    wrong_key = admin.post(
        "/config/webhooks/new",
        {
            "name": "engine2",
            "url": "http://127.0.0.1:9/hook",
            "events": ["item.failed"],
            "filter": '{"mrn": "1"}',
        },
    )
    assert "keys among" in wrong_key.content.decode()


def test_routing_is_checked_on_save(db):
    pipeline.ensure_reference_model()
    image = ModelRecord.objects.get(name="ct-lung-quant")
    nlp = ModelRecord.objects.get(name="chest-report-findings")
    operator = login("operator")
    ok = operator.post(
        f"/config/models/{image.pk}/accepts", {"modalities": "ct, pt", "body_parts": "chest"}, follow=True
    )
    assert "modalities CT, PT" in ok.content.decode() and "body parts CHEST" in ok.content.decode()
    image.refresh_from_db()
    assert image.accepts["modalities"] == ["CT", "PT"] and image.accepts["body_parts"] == ["CHEST"]
    bad_uid = operator.post(f"/config/models/{image.pk}/accepts", {"sop_classes": "1.2.x"}, follow=True)
    assert "is not a SOP Class UID" in bad_uid.content.decode()
    wrong_kind = operator.post(f"/config/models/{nlp.pk}/accepts", {"modalities": "CT"}, follow=True)
    assert "message_types only" in wrong_kind.content.decode()
    operator.post(f"/config/models/{nlp.pk}/accepts", {"message_types": "oru^r01, diagnosticreport"})
    nlp.refresh_from_db()
    assert nlp.accepts["message_types"] == ["ORU^R01", "DiagnosticReport"]


def test_a_deidentification_profile_version_is_checked_saved_and_activated(db):
    from fhirai.deid.profile import profile_current

    admin = login("superuser")
    bad = admin.post(
        "/config/deid", {"name": "site", "private_safelist": "nonsense", "activate": "on"}, follow=True
    )
    assert "is not CREATOR:gggg,ee" in bad.content.decode()
    admin.post(
        "/config/deid",
        {
            "name": "site",
            "options": ["clean-descriptors"],
            "private_safelist": "ACME 1.1:0019,10",
            "activate": "on",
        },
    )
    current = profile_current()
    assert (current.name, current.version, current.options) == ("site", "1", frozenset({"clean-descriptors"}))
    admin.post("/config/deid", {"name": "site", "options": []})  # saved, not activated
    assert profile_current().version == "1"
    from fhirai.deid.models import ProfileVersion

    second = ProfileVersion.objects.get(version=2)
    admin.post(f"/config/deid/{second.pk}/activate")
    assert profile_current().version == "2"
    assert AccessEvent.objects.filter(action="config.deid").count() == 3


def test_the_study_page_compares_headers_and_previews_by_role(phantom, settings, blob_dir):
    study = pipeline.run_all(phantom, settings)
    name = str(study.patient_name).split("^")[0]
    admin = login("superuser")
    page = admin.get(f"/items/study/{study.pk}/").content.decode()
    assert 'class="replaced"' in page and "PatientName" in page and "<th>As received</th>" in page
    viewer = login("viewer")
    seen = viewer.get(f"/items/study/{study.pk}/").content.decode()
    assert "<th>As received</th>" not in seen and "PatientName" in seen
    assert name and name not in seen and study.patient_id not in seen
    png = viewer.get(f"/items/study/{study.pk}/preview.png?original=1")  # viewers get the copy anyway
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert not AccessEvent.objects.filter(action="study.preview").exists()
    original = admin.get(f"/items/study/{study.pk}/preview.png?original=1")
    assert original.status_code == 200 and AccessEvent.objects.filter(action="study.preview").count() == 1


def test_allowed_senders_are_checked_and_take_effect_without_a_restart(settings, db):
    from fhirai.ingest.sources import dicom_calling_allowed, mllp_networks

    settings.FHIRAI_DICOM_ALLOW = []
    settings.FHIRAI_MLLP_ALLOW = ["10.0.0.0/8"]
    operator = login("operator")
    bad = operator.post("/config/sources", {"kind": "dicom-ae", "value": "BAD\\AE"}, follow=True)
    assert "is not an AE title" in bad.content.decode()
    bad_net = operator.post(
        "/config/sources", {"kind": "mllp-network", "value": "10.1.2.300/24"}, follow=True
    )
    assert "is not an IP address or network" in bad_net.content.decode()
    operator.post("/config/sources", {"kind": "dicom-ae", "value": "CT_SCANNER_1", "note": "CT room 2"})
    operator.post("/config/sources", {"kind": "mllp-network", "value": "192.168.7.9/24"})
    assert dicom_calling_allowed() == ["CT_SCANNER_1"]
    assert mllp_networks() == ["10.0.0.0/8", "192.168.7.0/24"]
    page = operator.get("/config/").content.decode()
    assert "CT room 2" in page and "192.168.7.0/24" in page
    from fhirai.ingest.models import SourceRule

    operator.post("/config/sources", {"remove": SourceRule.objects.get(kind="dicom-ae").pk})
    assert dicom_calling_allowed() == []
    assert AccessEvent.objects.filter(action="config.source").count() == 3


def test_a_dicom_sender_can_be_pinned_to_its_network_in_the_console(settings, db):
    from fhirai.ingest.sources import dicom_calling_allowed

    settings.FHIRAI_DICOM_ALLOW = ["MR_1@10.30.0.0/16"]
    operator = login("operator")
    bad = operator.post("/config/sources", {"kind": "dicom-ae", "value": "CT_1@10.20.1.300"}, follow=True)
    assert "is not an IP address or network" in bad.content.decode()
    operator.post("/config/sources", {"kind": "dicom-ae", "value": "CT_1@10.20.1.15/32", "note": "CT room 1"})
    assert dicom_calling_allowed() == ["MR_1@10.30.0.0/16", "CT_1@10.20.1.15"]
    page = operator.get("/config/").content.decode()
    assert "CT_1@10.20.1.15" in page and "MR_1@10.30.0.0/16" in page


def test_rejected_input_is_listed(db):
    from fhirai.ingest.receive import input_reject

    input_reject(protocol="hl7", raw=b"garbage", peer="10.0.0.9:4000", code="AR", detail="not HL7 v2")
    viewer = login("viewer")
    page = viewer.get("/items/?kind=rejection").content.decode()
    assert "not HL7 v2" in page and "10.0.0.9:4000" in page and "(input kept)" in page
