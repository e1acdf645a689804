"""The console today (Django admin): an operator finds a study or a message and reads its timeline."""

from __future__ import annotations

import pytest

from fhirai.context.messages import messages_process
from fhirai.ingest.messages import messages_receive
from fhirai.ingest.models import Message
from integrations.hl7.handlers import inbound_from
from tests.support import pipeline
from tests.support.hl7msg import adt

pytestmark = pytest.mark.django_db


def test_the_console_asks_for_a_login(client):
    response = client.get("/admin/ingest/study/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_study_and_message_pages_show_their_timelines(admin_client, phantom, settings, blob_dir):
    study = pipeline.run_all(phantom, settings)
    [stored] = messages_receive([inbound_from(adt("UI-1"), "127.0.0.1:9")[1]])
    messages_process(up_to=stored.message_id)
    assert admin_client.get("/admin/ingest/study/").status_code == 200
    page = admin_client.get(f"/admin/ingest/study/{study.pk}/change/").content.decode()
    for event in ("received", "acked", "complete", "deidentified", "queued", "inferred", "reported"):
        assert f"<b>{event}</b>" in page
    message_page = admin_client.get(f"/admin/ingest/message/{stored.message_id}/change/").content.decode()
    assert "<b>processed</b>" in message_page and Message.objects.get().state == "processed"
    assert admin_client.get("/admin/context/patient/").status_code == 200
