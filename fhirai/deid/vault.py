"""The re-identification vault: the only place that maps a pseudonym back to the original."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from fhirai.deid.models import VaultEntry
from fhirai.errors import NotFound


def vault_put(kind: str, *, pseudonym: str, original: str) -> None:
    """Remember `pseudonym` -> `original` (idempotent: the unique constraint refuses repeats)."""
    try:
        with transaction.atomic():
            VaultEntry.objects.create(kind=kind, pseudonym=pseudonym, original=original)
    except IntegrityError:
        pass


def vault_lookup(kind: str, pseudonym: str) -> str:
    """The original behind `pseudonym`; NotFound if this site never issued it."""
    try:
        return VaultEntry.objects.get(kind=kind, pseudonym=pseudonym).original
    except VaultEntry.DoesNotExist:
        raise NotFound(f"no {kind} pseudonym {pseudonym}") from None
