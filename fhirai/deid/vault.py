"""The re-identification vault: the only place that maps a pseudonym back to the original.

Originals are encrypted at rest with AES-256-GCM under the site's vault key (FHIRAI_VAULT_KEYS:
the first key encrypts, every listed key decrypts, so keys can be rotated), bound to their row by
the associated data (kind + pseudonym: a ciphertext copied onto another row does not decrypt).
Every read is audited (VaultAccess: when, what, why); only the write-back stage reads it."""

from __future__ import annotations

import base64
import hashlib
import os
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from fhirai.deid.models import VaultAccess, VaultEntry
from fhirai.errors import NotFound, Unavailable

FORMAT = "v1"


@lru_cache(maxsize=8)
def _keys(secrets: tuple[str, ...]) -> list[tuple[str, AESGCM]]:
    """(key id, cipher) per configured secret: a 256-bit key derived from each by SHA-256."""
    out = []
    for secret in secrets:
        material = hashlib.sha256(b"fhirai-vault\x1f" + secret.encode()).digest()
        key_id = hashlib.sha256(b"fhirai-vault-id\x1f" + material).hexdigest()[:8]
        out.append((key_id, AESGCM(material)))
    return out


def _ciphers() -> list[tuple[str, AESGCM]]:
    return _keys(tuple(settings.FHIRAI_VAULT_KEYS))


def seal(kind: str, pseudonym: str, original: str) -> str:
    """`original` encrypted under the current vault key, bound to (kind, pseudonym)."""
    key_id, cipher = _ciphers()[0]
    nonce = os.urandom(12)
    sealed = cipher.encrypt(nonce, original.encode(), f"{kind}\x1f{pseudonym}".encode())
    return f"{FORMAT}:{key_id}:{base64.b64encode(nonce + sealed).decode()}"


def unseal(kind: str, pseudonym: str, stored: str) -> str:
    """The original from a sealed value; Unavailable when no configured key opens it."""
    version, _, rest = stored.partition(":")
    key_id, _, payload = rest.partition(":")
    if version != FORMAT:
        raise Unavailable(f"vault entry {kind}:{pseudonym} is not in a known format")
    raw = base64.b64decode(payload)
    for candidate_id, cipher in _ciphers():
        if candidate_id == key_id:
            try:
                return cipher.decrypt(raw[:12], raw[12:], f"{kind}\x1f{pseudonym}".encode()).decode()
            except InvalidTag:
                break
    raise Unavailable(f"vault entry {kind}:{pseudonym} does not open with the configured vault keys")


def vault_put(kind: str, *, pseudonym: str, original: str) -> None:
    """Remember `pseudonym` -> `original` (idempotent: the unique constraint refuses repeats)."""
    try:
        with transaction.atomic():
            VaultEntry.objects.create(
                kind=kind, pseudonym=pseudonym, original=seal(kind, pseudonym, original)
            )
    except IntegrityError:
        pass


def vault_lookup(kind: str, pseudonym: str, *, purpose: str = "write-back") -> str:
    """The original behind `pseudonym` (the read is audited); NotFound if this site never issued it."""
    # Longer than any pseudonym this site issues (a search term typed into a filter): not found.
    entry = (
        VaultEntry.objects.filter(kind=kind, pseudonym=pseudonym).first() if len(pseudonym) <= 64 else None
    )
    VaultAccess.objects.create(
        at=timezone.now(), kind=kind, pseudonym=pseudonym[:64], purpose=purpose[:64], found=entry is not None
    )
    if entry is None:
        raise NotFound(f"no {kind} pseudonym {pseudonym}")
    return unseal(kind, pseudonym, entry.original)


def current_key_id() -> str:
    return _ciphers()[0][0]


def vault_entry_rekey(entry: VaultEntry) -> bool:
    """Re-seal one entry under the current key if an older one sealed it; True when rewritten."""
    if entry.original.startswith(f"{FORMAT}:{current_key_id()}:"):
        return False
    original = unseal(entry.kind, entry.pseudonym, entry.original)
    VaultEntry.objects.filter(pk=entry.pk).update(original=seal(entry.kind, entry.pseudonym, original))
    return True


def vault_rekey() -> int:
    """Re-encrypt every entry under the current (first) key, after a rotation; returns how many."""
    current = current_key_id()
    entries = VaultEntry.objects.exclude(original__startswith=f"{FORMAT}:{current}:")
    return sum(vault_entry_rekey(entry) for entry in entries.iterator())
