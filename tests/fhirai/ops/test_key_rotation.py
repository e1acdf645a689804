"""Key rotation in the background: after a new first key is listed, beat's keys_rotate re-encrypts
the blobs and the vault under it in bounded, resumable steps (no command to run), after which the
old secret can go; switching blob encryption on encrypts what was stored before."""

from __future__ import annotations

import threading
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from fhirai import blobs
from fhirai.deid import vault
from fhirai.deid.models import VaultEntry
from fhirai.ingest.models import Instance
from fhirai.ops import key_rotation
from fhirai.ops.key_rotation import keys_rotate
from fhirai.ops.models import KeyRotation
from tests.support import pipeline
from tests.support.phantom import ct_phantom

pytestmark = pytest.mark.django_db


def _stored_ids(blob_dir) -> set[str]:
    keys = [k for pair in Instance.objects.values_list("blob_key", "deid_blob_key") for k in pair if k]
    return {blobs.stored_key_id((blob_dir / key).read_bytes()) for key in keys}


def test_blobs_are_re_encrypted_in_resumable_steps_and_the_old_key_can_go(settings, blob_dir, monkeypatch):
    settings.FHIRAI_BLOB_KEYS = ["old-key"]
    study = pipeline.receive(ct_phantom(slices=6, size=32, seed=11))
    pipeline.complete_and_deidentify(study, settings)
    old_id = blobs.current_key_id()
    assert _stored_ids(blob_dir) == {old_id}
    settings.FHIRAI_BLOB_KEYS = ["new-key", "old-key"]
    monkeypatch.setattr(key_rotation, "BATCH", 4)
    assert keys_rotate(budget_seconds=0) is False  # one batch, then the budget is spent
    row = KeyRotation.objects.get(store="blobs", key_id=blobs.current_key_id())
    assert row.finished_at is None and row.rewritten == 4 and row.cursor > 0
    while not keys_rotate(budget_seconds=0):
        pass
    row.refresh_from_db()
    assert row.finished_at is not None and row.rewritten == 12 and row.missing == 0
    assert _stored_ids(blob_dir) == {blobs.current_key_id()}
    assert keys_rotate() is True  # finished: nothing walked again
    settings.FHIRAI_BLOB_KEYS = ["new-key"]
    instance = Instance.objects.filter(study=study).first()
    assert blobs.get(instance.blob_key)[128:132] == b"DICM"
    out = StringIO()
    call_command("key_rotation", stdout=out)
    assert "blobs" in out.getvalue() and "done" in out.getvalue()


def test_switching_blob_encryption_on_encrypts_what_was_stored_before(settings, blob_dir):
    settings.FHIRAI_BLOB_KEYS = []
    pipeline.receive(ct_phantom(slices=3, size=32, seed=12))
    assert _stored_ids(blob_dir) == {""}
    assert keys_rotate() is True  # encryption off: nothing to do, no row
    assert not KeyRotation.objects.filter(store="blobs").exists()
    settings.FHIRAI_BLOB_KEYS = ["first-key"]
    assert keys_rotate() is True
    assert _stored_ids(blob_dir) == {blobs.current_key_id()}


def test_the_vault_is_re_sealed_under_the_new_key(settings):
    settings.FHIRAI_VAULT_KEYS = ["vault-old"]
    for i in range(5):
        vault.vault_put("patient-id", pseudonym=f"P{i}", original=f"MRN-ROT-{i}")
    settings.FHIRAI_VAULT_KEYS = ["vault-new", "vault-old"]
    new_id = vault.current_key_id()
    assert keys_rotate() is True
    assert all(v.startswith(f"v1:{new_id}:") for v in VaultEntry.objects.values_list("original", flat=True))
    row = KeyRotation.objects.get(store="vault", key_id=new_id)
    assert row.rewritten == 5 and row.finished_at is not None
    settings.FHIRAI_VAULT_KEYS = ["vault-new"]
    assert vault.vault_lookup("patient-id", "P3") == "MRN-ROT-3"


@pytest.mark.django_db(transaction=True)
def test_a_store_another_worker_is_rotating_is_left_to_it(settings):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    settings.FHIRAI_VAULT_KEYS = ["vault-a"]
    vault.vault_put("patient-id", pseudonym="PX", original="MRN-X")
    settings.FHIRAI_VAULT_KEYS = ["vault-b", "vault-a"]
    key_id = vault.current_key_id()
    KeyRotation.objects.create(
        store="vault", key_id=key_id, started_at="2026-12-01T00:00Z", updated_at="2026-12-01T00:00Z"
    )
    held, release = threading.Event(), threading.Event()

    def other_worker() -> None:
        try:
            with transaction.atomic():
                list(KeyRotation.objects.select_for_update().filter(store="vault"))
                held.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=other_worker)
    thread.start()
    assert held.wait(10)
    try:
        assert keys_rotate(budget_seconds=1) is False  # not done: someone else holds it
        assert VaultEntry.objects.get(pseudonym="PX").original.startswith(
            "v1:"
        ) and not VaultEntry.objects.get(pseudonym="PX").original.startswith(f"v1:{key_id}:")
    finally:
        release.set()
        thread.join()
    assert keys_rotate() is True
    assert VaultEntry.objects.get(pseudonym="PX").original.startswith(f"v1:{key_id}:")
