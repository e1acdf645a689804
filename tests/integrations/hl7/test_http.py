from __future__ import annotations

import pytest

from fhirai.ingest.models import Message, Rejection
from tests.support.hl7msg import adt

pytestmark = pytest.mark.django_db
ER7 = "x-application/hl7-v2+er7"


def test_post_a_message_and_get_the_ack_in_the_body(client):
    response = client.post("/hl7/", data=adt("H-1"), content_type=ER7)
    assert response.status_code == 200 and response["Content-Type"] == ER7
    assert "MSA|AA|H-1" in response.content.decode()
    again = client.post("/hl7/", data=adt("H-1"), content_type=ER7)
    assert "MSA|AA|H-1" in again.content.decode() and Message.objects.count() == 1


def test_garbage_over_http_gets_ar_with_err(client):
    response = client.post("/hl7/", data=b"NOT HL7", content_type=ER7)
    body = response.content.decode()
    assert response.status_code == 200 and "MSA|AR|" in body and "\rERR|" in body
    assert Rejection.objects.get().protocol == "hl7"
