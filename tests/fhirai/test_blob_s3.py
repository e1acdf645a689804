"""The S3 blob backend against a real S3 API: moto's server on a loopback port, spoken to over
HTTP by boto3 exactly as a MinIO or AWS endpoint would be (no botocore stubbing)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from django.core.exceptions import ImproperlyConfigured
from moto.core.authorization import enable_iam_authentication
from moto.server import ThreadedMotoServer

from fhirai import blobs
from fhirai.errors import NotFound, Unavailable
from fhirai.ingest.models import Instance, StudyState
from fhirai.results.models import FhirResource
from tests.support import pipeline

REGION = "us-east-1"
SETTINGS_PY = Path(__file__).resolve().parents[2] / "fhirai" / "settings.py"
BLOB_ENV = (
    "FHIRAI_BLOB_BACKEND",
    "FHIRAI_S3_ENDPOINT_URL",
    "FHIRAI_S3_BUCKET",
    "FHIRAI_S3_ACCESS_KEY_ID",
    "FHIRAI_S3_SECRET_ACCESS_KEY",
    "FHIRAI_S3_DEID_ACCESS_KEY_ID",
    "FHIRAI_S3_DEID_SECRET_ACCESS_KEY",
    "FHIRAI_S3_TIMEOUT",
)


def _serve() -> tuple[ThreadedMotoServer, str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server, endpoint = _serve()
    yield endpoint
    server.stop()


@dataclass
class Store:
    endpoint: str
    bucket: str
    deid_bucket: str

    def client(self, key_id: str = "test-key", secret: str = "test-secret") -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )

    def has(self, bucket: str, name: str, **credentials: str) -> bool:
        found = self.client(**credentials).list_objects_v2(Bucket=bucket, Prefix=name)
        return any(o["Key"] == name for o in found.get("Contents", []))


def _use_s3(settings: Any, endpoint: str, bucket: str) -> None:
    settings.FHIRAI_BLOB_BACKEND = "s3"
    settings.FHIRAI_S3_ENDPOINT_URL = endpoint
    settings.FHIRAI_S3_REGION = REGION
    settings.FHIRAI_S3_BUCKET = bucket
    settings.FHIRAI_S3_PREFIX = ""
    settings.FHIRAI_S3_ACCESS_KEY_ID = "test-key"
    settings.FHIRAI_S3_SECRET_ACCESS_KEY = "test-secret"
    settings.FHIRAI_S3_DEID_BUCKET = ""
    settings.FHIRAI_S3_DEID_ACCESS_KEY_ID = ""
    settings.FHIRAI_S3_DEID_SECRET_ACCESS_KEY = ""
    settings.FHIRAI_S3_TIMEOUT = 2.0
    settings.FHIRAI_S3_MAX_ATTEMPTS = 1


@pytest.fixture
def s3(settings: Any, s3_endpoint: str, tmp_path: Any) -> Store:
    """Blobs on S3, in buckets of this test's own (moto's state is shared by the session)."""
    settings.FHIRAI_BLOB_DIR = tmp_path / "blobs-unused"
    store = Store(s3_endpoint, f"fhirai-{uuid.uuid4().hex[:12]}", f"fhirai-deid-{uuid.uuid4().hex[:12]}")
    for bucket in (store.bucket, store.deid_bucket):
        store.client().create_bucket(Bucket=bucket)
    _use_s3(settings, s3_endpoint, store.bucket)
    return store


def test_put_get_delete_round_trip_under_the_content_key(s3, settings):
    data = b"\x00DICM" + bytes(range(256)) * 64
    key = blobs.put(data, area="raw")
    digest = hashlib.sha256(data).hexdigest()
    assert key == f"raw/{digest[:2]}/{digest}"
    assert s3.has(s3.bucket, key)
    assert blobs.get(key) == data
    assert not (settings.FHIRAI_BLOB_DIR / key).exists()  # nothing went to the local disk

    blobs.delete(key)
    assert not s3.has(s3.bucket, key)
    blobs.delete(key)  # deleting again is not an error
    with pytest.raises(NotFound):
        blobs.get(key)


def test_the_same_bytes_put_twice_make_one_object(s3):
    first = blobs.put(b"same bytes", area="rejected")
    second = blobs.put(b"same bytes", area="rejected")
    assert first == second
    listed = s3.client().list_objects_v2(Bucket=s3.bucket)["Contents"]
    assert [o["Key"] for o in listed] == [first]


def test_a_missing_key_is_not_found(s3):
    with pytest.raises(NotFound):
        blobs.get("raw/ab/" + "ab" * 32)
    with pytest.raises(NotFound):
        blobs.get("nonsense/../raw")


def test_the_prefix_goes_before_every_key(s3, settings):
    settings.FHIRAI_S3_PREFIX = "/site-a/"
    key = blobs.put(b"prefixed", area="out")
    assert s3.has(s3.bucket, f"site-a/{key}") and not s3.has(s3.bucket, key)
    assert blobs.get(key) == b"prefixed"


def test_a_store_that_went_away_is_unavailable_not_missing(settings, tmp_path):
    server, endpoint = _serve()
    bucket = f"fhirai-{uuid.uuid4().hex[:12]}"
    Store(endpoint, bucket, bucket).client().create_bucket(Bucket=bucket)
    _use_s3(settings, endpoint, bucket)
    key = blobs.put(b"stored before the outage")
    server.stop()

    with pytest.raises(Unavailable):
        blobs.put(b"sent during the outage")
    with pytest.raises(Unavailable):
        blobs.get(key)


def test_a_bucket_that_does_not_exist_is_unavailable(s3, settings):
    settings.FHIRAI_S3_BUCKET = "fhirai-no-such-bucket"
    with pytest.raises(Unavailable):
        blobs.put(b"nowhere to go")


def _iam_user(iam: Any, name: str, bucket: str) -> dict[str, str]:
    """A user allowed S3 on `bucket` alone; returns its access key."""
    iam.create_user(UserName=name)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    iam.put_user_policy(UserName=name, PolicyName="one-bucket", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


def test_the_deid_area_uses_its_own_bucket_and_credentials(s3, settings):
    iam = boto3.session.Session().client(
        "iam",
        endpoint_url=s3.endpoint,
        region_name=REGION,
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    )
    suffix = uuid.uuid4().hex[:8]
    general = _iam_user(iam, f"store-{suffix}", s3.bucket)
    deid = _iam_user(iam, f"inference-{suffix}", s3.deid_bucket)
    settings.FHIRAI_S3_ACCESS_KEY_ID, settings.FHIRAI_S3_SECRET_ACCESS_KEY = general.values()
    settings.FHIRAI_S3_DEID_BUCKET = s3.deid_bucket
    settings.FHIRAI_S3_DEID_ACCESS_KEY_ID, settings.FHIRAI_S3_DEID_SECRET_ACCESS_KEY = deid.values()

    with enable_iam_authentication():  # moto now checks signatures and the users' policies
        raw_key = blobs.put(b"identified original", area="raw")
        deid_key = blobs.put(b"de-identified copy", area="deid")
        assert blobs.get(deid_key) == b"de-identified copy"
        assert s3.has(s3.bucket, raw_key, **general)
        assert s3.has(s3.deid_bucket, deid_key, **deid)
        assert not s3.has(s3.bucket, deid_key, **general)
        with pytest.raises(ClientError, match="AccessDenied"):  # the general key can't reach deid
            s3.has(s3.deid_bucket, deid_key, **general)

        # An inference host holds the deid credentials alone: it reads the de-identified
        # copies, and the identified originals are out of its reach.
        settings.FHIRAI_S3_ACCESS_KEY_ID, settings.FHIRAI_S3_SECRET_ACCESS_KEY = deid.values()
        assert blobs.get(deid_key) == b"de-identified copy"
        with pytest.raises(Unavailable):
            blobs.get(raw_key)


@pytest.mark.django_db
def test_a_ct_study_runs_to_its_report_with_blobs_on_s3(s3, settings, phantom):
    settings.FHIRAI_S3_DEID_BUCKET = s3.deid_bucket
    study = pipeline.run_all(phantom, settings)

    assert study.state == StudyState.REPORTED
    assert FhirResource.objects.filter(resource_type="DiagnosticReport").count() == 1
    instances = list(Instance.objects.filter(study=study))
    assert len(instances) == len(phantom.files)
    for instance in instances:
        assert instance.blob_key.startswith("raw/") and s3.has(s3.bucket, instance.blob_key)
        assert instance.deid_blob_key.startswith("deid/")
        assert s3.has(s3.deid_bucket, instance.deid_blob_key)
        assert not s3.has(s3.bucket, instance.deid_blob_key)


# --- settings ------------------------------------------------------------------------------------
def _settings_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """fhirai/settings.py executed afresh (as at startup) with these blob store variables."""
    for name in BLOB_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("fhirai_settings_probe", SETTINGS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_read_the_deid_credentials_from_files(monkeypatch, tmp_path):
    (tmp_path / "key-id").write_text("AKIADEID\n")
    (tmp_path / "secret").write_text("deid-secret\n")
    loaded = _settings_with(
        monkeypatch,
        FHIRAI_BLOB_BACKEND="s3",
        FHIRAI_S3_BUCKET="fhirai",
        FHIRAI_S3_ENDPOINT_URL="https://minio.hospital.test:9000/",
        FHIRAI_S3_DEID_ACCESS_KEY_ID_FILE=str(tmp_path / "key-id"),
        FHIRAI_S3_DEID_SECRET_ACCESS_KEY_FILE=str(tmp_path / "secret"),
    )
    assert loaded.FHIRAI_S3_DEID_ACCESS_KEY_ID == "AKIADEID"
    assert loaded.FHIRAI_S3_DEID_SECRET_ACCESS_KEY == "deid-secret"
    assert loaded.FHIRAI_S3_ENDPOINT_URL == "https://minio.hospital.test:9000"
    assert loaded.FHIRAI_S3_ACCESS_KEY_ID == ""  # the general area keeps boto3's default chain


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"FHIRAI_BLOB_BACKEND": "nfs"}, "must be local or s3"),
        ({"FHIRAI_BLOB_BACKEND": "s3"}, "needs FHIRAI_S3_BUCKET"),
        ({"FHIRAI_S3_ACCESS_KEY_ID": "AKIA"}, "set both or neither"),
        ({"FHIRAI_S3_DEID_SECRET_ACCESS_KEY": "s3cret"}, "set both or neither"),
        ({"FHIRAI_S3_ENDPOINT_URL": "minio:9000"}, "http:// or https://"),
        ({"FHIRAI_S3_TIMEOUT": "0"}, "positive"),
    ],
)
def test_settings_refuse_an_unusable_blob_store_at_startup(env, complaint, monkeypatch):
    with pytest.raises(ImproperlyConfigured, match=complaint):
        _settings_with(monkeypatch, **env)


def test_encrypted_at_rest_on_s3_and_rekeyed_in_place(s3, settings):
    settings.FHIRAI_BLOB_KEYS = ["s3-old-key"]
    data = b"\x00DICM" + b"Testperson^Alma" * 64
    key = blobs.put(data, area="raw")
    stored = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert stored.startswith(blobs.MAGIC) and b"Testperson" not in stored
    settings.FHIRAI_BLOB_KEYS = ["s3-new-key", "s3-old-key"]
    assert blobs.rekey(key) and not blobs.rekey(key)
    settings.FHIRAI_BLOB_KEYS = ["s3-new-key"]
    assert blobs.get(key) == data
