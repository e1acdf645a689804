"""Raw bytes by key: DICOM instances as received, de-identified copies, raw messages.

Keys are content-addressed (`<area>/<aa>/<sha256>`): a resend of the same bytes finds its blob
already there, and a key says nothing about the patient. put() returns only once the bytes are
durable (invariant 1: acknowledged means durable). Areas keep the de-identified copies apart, so
an inference host can be given the `deid` area alone.

Where the bytes live is a backend chosen by FHIRAI_BLOB_BACKEND: `local` (files under
FHIRAI_BLOB_DIR, fsynced) or `s3` (an S3-compatible store, fhirai.blob_s3). Keys are the same
on both.

Encryption at rest: with FHIRAI_BLOB_KEYS set, every blob is written AES-256-GCM encrypted under
the first key (a header names the key; the blob's key is the associated data, so a file moved to
another key does not decrypt), and read under whichever listed key wrote it; blobs written before
encryption was switched on are read as they are. After a new first key is added,
`python manage.py blob_rekey` re-encrypts, online, every blob the database refers to; then the old
key can leave the list."""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
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

    def replace(self, key: str, data: bytes) -> None:
        """Overwrite `key` with new bytes (re-encryption), atomically; durable on return."""


class LocalBackend:
    """Files under `root`, sharded by the key's `<aa>/` level, written by atomic rename and
    fsynced with their directory entry."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, data: bytes) -> None:
        if (self.root / key).exists():
            return
        self.replace(key, data)

    def get(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no blob {key}") from None
        except OSError as exc:
            raise Unavailable(f"blob store: {exc.strerror or exc}") from exc

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def replace(self, key: str, data: bytes) -> None:
        """Write `key` whether or not it exists, by atomic rename (a reader sees the old bytes or
        the new, never a mix), fsynced with its directory entry."""
        path = self.root / key
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


# --- encryption at rest ---------------------------------------------------------------------------

MAGIC = b"FHIRAIE1"  # then the 8-character key id, a 12-byte nonce, ciphertext and GCM tag
_HEADER = len(MAGIC) + 8 + 12


@functools.lru_cache(maxsize=8)
def _keyring(secrets_: tuple[str, ...]) -> list[tuple[bytes, AESGCM]]:
    """(key id, cipher) per configured secret: an AES-256 key derived from each by SHA-256."""
    out = []
    for secret in secrets_:
        material = hashlib.sha256(b"fhirai-blob\x1f" + secret.encode()).digest()
        key_id = hashlib.sha256(b"fhirai-blob-id\x1f" + material).hexdigest()[:8].encode()
        out.append((key_id, AESGCM(material)))
    return out


def _ring() -> list[tuple[bytes, AESGCM]]:
    return _keyring(tuple(settings.FHIRAI_BLOB_KEYS))


def _seal(key: str, data: bytes) -> bytes:
    ring = _ring()
    if not ring:
        return data
    key_id, cipher = ring[0]
    nonce = secrets.token_bytes(12)
    return MAGIC + key_id + nonce + cipher.encrypt(nonce, data, key.encode())


def _open(key: str, stored: bytes) -> bytes:
    if not stored.startswith(MAGIC):
        return stored  # written before encryption was switched on
    key_id, nonce = stored[len(MAGIC) : len(MAGIC) + 8], stored[len(MAGIC) + 8 : _HEADER]
    for candidate, cipher in _ring():
        if candidate == key_id:
            try:
                return cipher.decrypt(nonce, stored[_HEADER:], key.encode())
            except InvalidTag:
                raise Unavailable(
                    f"blob {key} does not decrypt: altered, or moved from another key"
                ) from None
    raise Unavailable(f"blob {key} is encrypted under key {key_id.decode()}, which FHIRAI_BLOB_KEYS lacks")


def stored_key_id(stored: bytes) -> str:
    """The id of the key a stored blob is encrypted under ("" when it is not encrypted)."""
    return stored[len(MAGIC) : len(MAGIC) + 8].decode() if stored.startswith(MAGIC) else ""


def current_key_id() -> str:
    ring = _ring()
    return ring[0][0].decode() if ring else ""


def put(data: bytes, *, area: str = "raw") -> str:
    """Store `data` durably (encrypted when FHIRAI_BLOB_KEYS is set) and return its key. Idempotent
    for identical bytes: the key is the hash of the plain bytes."""
    if area not in AREAS:
        raise ValueError(f"unknown blob area {area!r}")
    digest = hashlib.sha256(data).hexdigest()
    key = f"{area}/{digest[:2]}/{digest}"
    _backend().put(key, _seal(key, data))
    return key


def get(key: str) -> bytes:
    """The (plain) bytes stored under `key`."""
    key = _checked(key)
    return _open(key, _backend().get(key))


def rekey(key: str) -> bool:
    """Re-encrypt one blob under the current key when another key (or none) wrote it; True when
    it was rewritten. The plain bytes, and so the key, stay the same."""
    key = _checked(key)
    current = current_key_id()
    backend = _backend()
    stored = backend.get(key)
    if stored_key_id(stored) == current:
        return False
    backend.replace(key, _seal(key, _open(key, stored)))
    return True


def delete(key: str) -> None:
    """Remove a blob (used for orphaned copies only; raw input is kept)."""
    _backend().delete(_checked(key))
