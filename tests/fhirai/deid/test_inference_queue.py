"""Invariant 3: the inference tier gets de-identified data only. The pipeline runs for real up to
the hand-off, the message is published to the real broker (Redis), and then we read what sits on
the `inference` queue, and every model input it names, looking for any identifier of the input."""

from __future__ import annotations

import base64
import json
from io import BytesIO

import pytest
import redis
from django.conf import settings as django_settings
from pydicom import dcmread

from fhirai import blobs
from tests.support import pipeline
from tests.support.phantom import ct_phantom

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker():
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    client.delete("inference", "default")
    yield client
    client.delete("inference", "default")


def _identifiers(ph) -> list[str]:
    values = [v for v in ph.identifiers.values() if v]
    values += [p for v in ("Testperson^Alma^Q", "Referrer^Rita") for p in v.split("^") if len(p) > 2]
    return values


def test_no_identifier_reaches_the_inference_queue_or_model_inputs(
    settings, blob_dir, broker, django_capture_on_commit_callbacks
):
    ph = ct_phantom(slices=8, size=48, seed=11)
    study = pipeline.receive(ph)
    with django_capture_on_commit_callbacks(execute=True):
        job = pipeline.complete_and_deidentify(study, settings)
    assert job is not None
    raw_messages = broker.lrange("inference", 0, -1)
    assert len(raw_messages) == 1
    envelope = json.loads(raw_messages[0])
    body = (
        base64.b64decode(envelope["body"]).decode()
        if envelope.get("properties", {}).get("body_encoding") == "base64"
        else envelope["body"]
    )
    wire = raw_messages[0].decode() + body
    args = json.loads(body)[0]
    assert args[0] == job.pk and args[1] == "ct-lung-quant"
    inputs = args[3]
    assert len(inputs) == 8 and all(key.startswith("deid/") for key in inputs)
    uids = [ph.identifiers["StudyInstanceUID"], ph.identifiers["SeriesInstanceUID"]]
    for value in _identifiers(ph) + uids:
        assert value not in wire, f"{value!r} on the inference queue"
    for key in inputs:
        data = blobs.get(key)
        for value in _identifiers(ph):
            assert value.encode() not in data, f"{value!r} in a model input"
    # The original instance UIDs must not survive in the model inputs either.
    for raw in ph.files:
        sop_uid = dcmread(BytesIO(raw), stop_before_pixels=True).SOPInstanceUID
        assert all(sop_uid.encode() not in blobs.get(key) for key in inputs)
