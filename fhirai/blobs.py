"""Raw bytes by key: DICOM instances as received, de-identified copies, raw messages.

Keys are content-addressed (`<area>/<aa>/<sha256>`): a resend of the same bytes finds its blob
already there, and a key says nothing about the patient. put() returns only once the bytes and
their directory entry are fsynced (invariant 1: acknowledged means durable). Areas keep the
de-identified copies apart, so an inference host can be given the `deid` area alone."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from django.conf import settings

from fhirai.errors import NotFound, Unavailable

AREAS = ("raw", "deid", "rejected", "out")  # out: identified outputs built here (DICOM SR)


def _root() -> Path:
    return Path(settings.FHIRAI_BLOB_DIR)


def _path(key: str) -> Path:
    area, _, rest = key.partition("/")
    if area not in AREAS or not rest or ".." in rest.split("/"):
        raise NotFound(f"no such blob key {key!r}")
    return _root() / key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def put(data: bytes, *, area: str = "raw") -> str:
    """Store `data` durably and return its key. Idempotent for identical bytes."""
    if area not in AREAS:
        raise ValueError(f"unknown blob area {area!r}")
    digest = hashlib.sha256(data).hexdigest()
    key = f"{area}/{digest[:2]}/{digest}"
    path = _root() / key
    if path.exists():
        return key
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
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
    return key


def get(key: str) -> bytes:
    """The bytes stored under `key`."""
    try:
        return _path(key).read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no blob {key}") from None
    except OSError as exc:
        raise Unavailable(f"blob store: {exc.strerror or exc}") from exc


def delete(key: str) -> None:
    """Remove a blob (used for orphaned copies only; raw input is kept)."""
    _path(key).unlink(missing_ok=True)
