"""Raw bytes by key: DICOM instances as received, de-identified copies, raw messages.

Keys are content-addressed (`<area>/<aa>/<sha256>`): a resend of the same bytes finds its blob
already there, and a key says nothing about the patient. put() returns only once the bytes are
durable (invariant 1: acknowledged means durable). Areas keep the de-identified copies apart, so
an inference host can be given the `deid` area alone.

Where the bytes live is a backend chosen by FHIRAI_BLOB_BACKEND: `local` (files under
FHIRAI_BLOB_DIR, fsynced) or `s3` (an S3-compatible store, fhirai.blob_s3). Keys are the same
on both."""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

from django.conf import settings

from fhirai.errors import NotFound, Unavailable

AREAS = ("raw", "deid", "rejected", "out")  # out: identified outputs built here (DICOM SR)


class Backend(Protocol):
    """Where blobs are kept. Keys arrive checked; each method raises NotFound or Unavailable."""

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, returning only once it is durable; idempotent."""

    def get(self, key: str) -> bytes:
        """The bytes under `key`, or NotFound."""

    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""


class LocalBackend:
    """Files under `root`, sharded by the key's `<aa>/` level, written by atomic rename and
    fsynced with their directory entry."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        if path.exists():
            return
        try:
            try:
                fd, tmp = tempfile.mkstemp(dir=_shard_ready(str(path.parent)), prefix=".tmp-")
            except FileNotFoundError:  # the shard went away since it was made: make it again
                _shard_ready.cache_clear()
                fd, tmp = tempfile.mkstemp(dir=_shard_ready(str(path.parent)), prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(path.parent)
        except OSError as exc:
            # ENOSPC, EIO, a read-only mount: the sender must retry later, never get a false ACK.
            raise Unavailable(f"blob store: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no blob {key}") from None
        except OSError as exc:
            raise Unavailable(f"blob store: {exc.strerror or exc}") from exc

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)


@functools.lru_cache(maxsize=4096)
def _shard_ready(path: str) -> str:
    """The shard directory, made once per process: a mkdir per put is a syscall per C-STORE
    that waits on the filesystem journal when another commit is flushing it."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _backend() -> Backend:
    """The configured backend, read per call so that a settings change takes effect at once."""
    if settings.FHIRAI_BLOB_BACKEND == "s3":
        from fhirai import blob_s3  # boto3 is imported only where S3 is configured

        return blob_s3.S3Backend()
    return LocalBackend(Path(settings.FHIRAI_BLOB_DIR))


def _checked(key: str) -> str:
    area, _, rest = key.partition("/")
    if area not in AREAS or not rest or ".." in rest.split("/"):
        raise NotFound(f"no such blob key {key!r}")
    return key


def put(data: bytes, *, area: str = "raw") -> str:
    """Store `data` durably and return its key. Idempotent for identical bytes."""
    if area not in AREAS:
        raise ValueError(f"unknown blob area {area!r}")
    digest = hashlib.sha256(data).hexdigest()
    key = f"{area}/{digest[:2]}/{digest}"
    _backend().put(key, data)
    return key


def get(key: str) -> bytes:
    """The bytes stored under `key`."""
    return _backend().get(_checked(key))


def delete(key: str) -> None:
    """Remove a blob (used for orphaned copies only; raw input is kept)."""
    _backend().delete(_checked(key))
