"""The S3 blob backend: the keys of fhirai.blobs as object names in an S3-compatible store.

Each area resolves to a bucket and credentials (the `deid` area may have its own of both, so an
inference host can hold the de-identified copies' credentials alone). A boto3 client is made
lazily, once per process and per distinct configuration, and shared by every thread (boto3
clients are thread-safe; making them is not, hence the lock). A successful PutObject is the
store's acknowledgement that the object is durable, which is what blobs.put() promises."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from fhirai.errors import FhiraiError, NotFound, Unavailable

log = logging.getLogger(__name__)

# Error codes S3 (and compatible stores) give for an object that is not there; HeadObject has no
# body, so its 404 arrives as the bare status.
_MISSING = frozenset({"NoSuchKey", "NotFound", "404"})
# One pool per client, shared by the SCP's associations and the inference threads.
_POOL_CONNECTIONS = 32


@dataclass(frozen=True)
class AreaStore:
    """Where one area's objects go and the credentials that reach them (empty = boto3's chain)."""

    endpoint_url: str
    region: str
    bucket: str
    prefix: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    timeout: float
    max_attempts: int

    def name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key


def area_store(area: str) -> AreaStore:
    """The store of `area` from the settings: the `deid` area's own bucket and credentials
    where they are set, the general ones otherwise."""
    bucket, key_id, secret = settings.FHIRAI_S3_BUCKET, "", ""
    if area == "deid":
        bucket = settings.FHIRAI_S3_DEID_BUCKET or bucket
        key_id, secret = settings.FHIRAI_S3_DEID_ACCESS_KEY_ID, settings.FHIRAI_S3_DEID_SECRET_ACCESS_KEY
    if not key_id:
        key_id, secret = settings.FHIRAI_S3_ACCESS_KEY_ID, settings.FHIRAI_S3_SECRET_ACCESS_KEY
    return AreaStore(
        endpoint_url=settings.FHIRAI_S3_ENDPOINT_URL,
        region=settings.FHIRAI_S3_REGION,
        bucket=bucket,
        prefix=settings.FHIRAI_S3_PREFIX.strip("/"),
        access_key_id=key_id,
        secret_access_key=secret,
        timeout=settings.FHIRAI_S3_TIMEOUT,
        max_attempts=settings.FHIRAI_S3_MAX_ATTEMPTS,
    )


_clients: dict[tuple[int, AreaStore], Any] = {}  # a registry of clients, keyed by pid and store
_clients_lock = threading.Lock()


def _client(store: AreaStore) -> Any:
    """The process's client for `store`; a forked child makes its own (clients hold sockets)."""
    cache_key = (os.getpid(), store)
    client = _clients.get(cache_key)
    if client is None:
        with _clients_lock:
            client = _clients.get(cache_key)
            if client is None:
                for stale in [k for k in _clients if k[0] != cache_key[0]]:
                    del _clients[stale]
                client = _clients[cache_key] = _new_client(store)
    return client


def _new_client(store: AreaStore) -> Any:
    config = Config(
        connect_timeout=store.timeout,
        read_timeout=store.timeout,
        retries={"mode": "standard", "max_attempts": store.max_attempts},
        max_pool_connections=_POOL_CONNECTIONS,
        # Path-style for a custom endpoint: MinIO, Ceph and most S3-compatible stores serve it
        # without wildcard DNS. AWS itself keeps virtual-hosted style.
        s3={"addressing_style": "path" if store.endpoint_url else "auto"},
        # Content-MD5 is sent explicitly and verified by every S3-compatible store; botocore's
        # default CRC trailers (1.36+) are refused by some of them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session per client: boto3's default session is not safe to share while making clients.
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=store.endpoint_url or None,
        region_name=store.region or None,
        aws_access_key_id=store.access_key_id or None,
        aws_secret_access_key=store.secret_access_key or None,
        config=config,
    )


def _translate(exc: Exception, key: str) -> FhiraiError:
    """NotFound for a missing object; everything else (network, timeouts, 5xx, throttling, a
    refused credential) is Unavailable, so a listener refuses in its protocol's terms and the
    sender retries. Keys are hashes: they may be logged."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            return NotFound(f"no blob {key}")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        log.warning("blob store: %s (HTTP %s) on %s", code, status, key)
        return Unavailable(f"blob store: {code or status} on {key}")
    log.warning("blob store: %s on %s", type(exc).__name__, key)
    return Unavailable(f"blob store: {exc}")


class S3Backend:
    """fhirai.blobs.Backend on S3: PutObject with Content-MD5, GetObject, DeleteObject."""

    def put(self, key: str, data: bytes) -> None:
        # No HEAD first: the key is the content's hash, so writing the same bytes again is
        # harmless and saves a round trip on every first receipt.
        store = area_store(key.partition("/")[0])
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
        try:
            _client(store).put_object(
                Bucket=store.bucket,
                Key=store.name(key),
                Body=data,
                ContentMD5=md5,
                ContentType="application/octet-stream",
            )
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, key) from exc

    def get(self, key: str) -> bytes:
        store = area_store(key.partition("/")[0])
        try:
            response = _client(store).get_object(Bucket=store.bucket, Key=store.name(key))
            return response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, key) from exc

    def replace(self, key: str, data: bytes) -> None:
        """PutObject replaces an object atomically: readers get the old or the new one."""
        self.put(key, data)

    def delete(self, key: str) -> None:
        # DeleteObject succeeds for a missing key: idempotent as the contract asks.
        store = area_store(key.partition("/")[0])
        try:
            _client(store).delete_object(Bucket=store.bucket, Key=store.name(key))
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, key) from exc
