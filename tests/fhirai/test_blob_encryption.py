"""Blobs encrypted at rest (AES-256-GCM under FHIRAI_BLOB_KEYS), read back through every stage of
the pipeline, refused when altered or moved, and re-encrypted online by `blob_rekey` after a key
rotation, after which the old key can go."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from fhirai import blobs
from fhirai.errors import Unavailable
from fhirai.ingest.models import Instance, StudyState
from tests.support import pipeline

pytestmark = pytest.mark.django_db

PLAIN = b"\x00" * 128 + b"DICM" + b"Testperson^Alma MRN-7734921 " * 50


def test_a_blob_is_stored_encrypted_and_read_back_plain(settings, blob_dir):
    settings.FHIRAI_BLOB_KEYS = ["first-key"]
    key = blobs.put(PLAIN)
    on_disk = (blob_dir / key).read_bytes()
    assert on_disk.startswith(blobs.MAGIC) and b"Testperson" not in on_disk and b"DICM" not in on_disk
    assert blobs.stored_key_id(on_disk) == blobs.current_key_id() != ""
    assert blobs.get(key) == PLAIN
    assert blobs.put(PLAIN) == key  # the key is the plain bytes' hash: a resend finds it


def test_blobs_from_before_encryption_are_still_read(settings, blob_dir):
    settings.FHIRAI_BLOB_KEYS = []
    key = blobs.put(PLAIN)
    settings.FHIRAI_BLOB_KEYS = ["first-key"]
    assert blobs.get(key) == PLAIN


def test_an_altered_or_moved_blob_does_not_decrypt_and_a_missing_key_is_named(settings, blob_dir):
    settings.FHIRAI_BLOB_KEYS = ["first-key"]
    key, other = blobs.put(PLAIN), blobs.put(PLAIN + b"x")
    path = blob_dir / key
    altered = bytearray(path.read_bytes())
    altered[-1] ^= 1
    path.write_bytes(bytes(altered))
    with pytest.raises(Unavailable, match="does not decrypt"):
        blobs.get(key)
    path.write_bytes((blob_dir / other).read_bytes())  # another blob's ciphertext under this key
    with pytest.raises(Unavailable, match="does not decrypt"):
        blobs.get(key)
    settings.FHIRAI_BLOB_KEYS = ["some-other-key"]
    with pytest.raises(Unavailable, match="FHIRAI_BLOB_KEYS lacks"):
        blobs.get(other)


def test_the_pipeline_runs_on_encrypted_blobs_and_rotation_rekeys_them_all(settings, blob_dir, phantom):
    settings.FHIRAI_BLOB_KEYS = ["old-key"]
    study = pipeline.run_all(phantom, settings)
    assert study.state in (StudyState.REPORTED, StudyState.WRITTEN_BACK)
    instance = Instance.objects.filter(study=study).first()
    for key in (instance.blob_key, instance.deid_blob_key):
        assert (blob_dir / key).read_bytes().startswith(blobs.MAGIC)
    old_id = blobs.current_key_id()
    settings.FHIRAI_BLOB_KEYS = ["new-key", "old-key"]  # rotation: a new first key, the old still listed
    out = StringIO()
    call_command("blob_rekey", stdout=out)
    rewritten = int(out.getvalue().split()[1])
    assert rewritten >= 2 * Instance.objects.filter(study=study).count()
    assert blobs.stored_key_id((blob_dir / instance.blob_key).read_bytes()) not in ("", old_id)
    out = StringIO()
    call_command("blob_rekey", stdout=out)
    assert out.getvalue().startswith("re-encrypted 0 blobs")  # resumable: nothing left
    settings.FHIRAI_BLOB_KEYS = ["new-key"]  # the old key can go
    assert blobs.get(instance.blob_key).startswith(b"\x00" * 128 + b"DICM")
