"""Key rotation in the background: after a site puts a new first key in FHIRAI_BLOB_KEYS or
FHIRAI_VAULT_KEYS (keeping the old ones listed) and restarts, the default worker re-encrypts what
was written under the older keys, in bounded steps from Celery beat, without anyone running a
command (`blob_rekey` / `vault_rekey` do the same in the foreground). Switching blob encryption on
for the first time encrypts the blobs written before, the same way.

Progress is a KeyRotation row per store and key, advanced batch by batch in its own transaction
under the row's lock, so several workers never walk the same store at once and a killed worker
resumes where the last batch ended. When a store's row is finished, nothing refers to data under
an older key and the old secret can be dropped."""

from __future__ import annotations

import logging
import time

from django.db import transaction
from django.utils import timezone

from fhirai import blobs
from fhirai.deid import vault
from fhirai.deid.models import VaultEntry
from fhirai.ops.blob_rekey import BLOB_SOURCES, RekeyCount, blob_rekey_count
from fhirai.ops.models import KeyRotation

log = logging.getLogger(__name__)
BATCH = 200


def _current(store: str) -> str:
    if store == "blobs":
        return blobs.current_key_id()  # "" while blob encryption is off: nothing to rotate
    return vault.current_key_id()


def _blobs_batch(row: KeyRotation) -> bool:
    """Re-encrypt the next batch of one blob column; True when every column is done."""
    model, field = BLOB_SOURCES[row.source]
    rows = list(model.objects.filter(pk__gt=row.cursor).order_by("pk").values_list("pk", field)[:BATCH])
    count = RekeyCount()
    for _, key in rows:
        blob_rekey_count(key, count)
    row.rewritten += count.rewritten
    row.current += count.current
    row.missing += count.missing
    if len(rows) == BATCH:
        row.cursor = rows[-1][0]
        return False
    row.source, row.cursor = row.source + 1, 0
    return row.source >= len(BLOB_SOURCES)


def _vault_batch(row: KeyRotation) -> bool:
    """Re-seal the next batch of vault entries; True when every entry is done."""
    entries = list(VaultEntry.objects.filter(pk__gt=row.cursor).order_by("pk")[:BATCH])
    for entry in entries:
        if vault.vault_entry_rekey(entry):
            row.rewritten += 1
        else:
            row.current += 1
    if entries:
        row.cursor = entries[-1].pk
    return len(entries) < BATCH


def _step(store: str, key_id: str) -> bool | None:
    """One batch of one store in one transaction; True when the store is done, None when another
    worker holds it."""
    now = timezone.now()
    KeyRotation.objects.get_or_create(
        store=store, key_id=key_id, defaults={"started_at": now, "updated_at": now}
    )
    with transaction.atomic():
        row = (
            KeyRotation.objects.select_for_update(skip_locked=True).filter(store=store, key_id=key_id).first()
        )
        if row is None:
            return None
        if row.finished_at is not None:
            return True
        done = _blobs_batch(row) if store == "blobs" else _vault_batch(row)
        row.updated_at = timezone.now()
        if done:
            row.finished_at = row.updated_at
            log.info("key rotation: %s", row)
        row.save()
        return done


def keys_rotate(budget_seconds: float = 20.0) -> bool:
    """Advance every store's rotation for up to `budget_seconds`; True when nothing is left."""
    deadline = time.monotonic() + budget_seconds
    left = False
    for store in ("vault", "blobs"):
        key_id = _current(store)
        if not key_id:
            continue
        while True:
            done = _step(store, key_id)
            if done is None:  # another worker is on it
                left = True
                break
            if done:
                break
            if time.monotonic() >= deadline:
                left = True
                break
    return not left
