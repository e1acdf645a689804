"""The vault: originals encrypted at rest and bound to their row, keys rotatable, reads audited."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from fhirai.deid.models import VaultAccess, VaultEntry
from fhirai.deid.vault import vault_lookup, vault_put
from fhirai.errors import NotFound, Unavailable

pytestmark = pytest.mark.django_db


def test_original_is_encrypted_at_rest_and_reads_are_audited(settings):
    settings.FHIRAI_VAULT_KEYS = ["k1"]
    vault_put("patient-id", pseudonym="P1", original="MRN-SECRET-1")
    stored = VaultEntry.objects.get().original
    assert "MRN-SECRET-1" not in stored and stored.startswith("v1:")
    assert vault_lookup("patient-id", "P1", purpose="test") == "MRN-SECRET-1"
    with pytest.raises(NotFound):
        vault_lookup("patient-id", "P2", purpose="test")
    assert list(VaultAccess.objects.values_list("pseudonym", "purpose", "found")) == [
        ("P1", "test", True),
        ("P2", "test", False),
    ]


def test_a_ciphertext_moved_to_another_row_does_not_open(settings):
    settings.FHIRAI_VAULT_KEYS = ["k1"]
    vault_put("patient-id", pseudonym="P1", original="A")
    vault_put("patient-id", pseudonym="P2", original="B")
    VaultEntry.objects.filter(pseudonym="P2").update(original=VaultEntry.objects.get(pseudonym="P1").original)
    with pytest.raises(Unavailable):
        vault_lookup("patient-id", "P2")


def test_key_rotation(settings):
    settings.FHIRAI_VAULT_KEYS = ["old"]
    vault_put("accession", pseudonym="A1", original="ACC-1")
    settings.FHIRAI_VAULT_KEYS = ["new", "old"]
    assert vault_lookup("accession", "A1") == "ACC-1"  # old entries still open
    call_command("vault_rekey")
    settings.FHIRAI_VAULT_KEYS = ["new"]
    assert vault_lookup("accession", "A1") == "ACC-1"
    settings.FHIRAI_VAULT_KEYS = ["other"]
    with pytest.raises(Unavailable):
        vault_lookup("accession", "A1")
