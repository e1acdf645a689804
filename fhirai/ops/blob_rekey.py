"""Key rotation for blobs at rest: every blob the database refers to, re-encrypted under the first
key of FHIRAI_BLOB_KEYS (fhirai.blobs.rekey). Online and resumable: blobs already under the current
key are skipped, and a reader sees the old bytes or the new ones (atomic replace)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fhirai import blobs
from fhirai.context.models import ClinicalReport
from fhirai.errors import NotFound
from fhirai.ingest.models import Instance, Rejection
from fhirai.routing.models import InferenceJob
from fhirai.routing.rules import WITHHELD


@dataclass
class RekeyCount:
    rewritten: int = 0
    current: int = 0
    missing: int = 0


# Every column that refers to a blob: (model, field).
BLOB_SOURCES = (
    (Instance, "blob_key"),
    (Instance, "deid_blob_key"),
    (Rejection, "blob_key"),
    (ClinicalReport, "deid_blob_key"),
    (InferenceJob, "sr_blob_key"),
    (InferenceJob, "key_image_blob_key"),
)


def referenced_keys() -> Iterator[str]:
    """Each blob key a row refers to, once."""
    seen: set[str] = set()
    for model, field in BLOB_SOURCES:
        for key in model.objects.values_list(field, flat=True).iterator(chunk_size=2000):
            if key and key != WITHHELD and key not in seen:
                seen.add(key)
                yield key


def blob_rekey_count(key: str, count: RekeyCount) -> None:
    """Re-encrypt one referenced blob if it needs it, counted in `count`."""
    if not key or key == WITHHELD:
        return
    try:
        if blobs.rekey(key):
            count.rewritten += 1
        else:
            count.current += 1
    except NotFound:
        count.missing += 1


def blobs_rekey() -> RekeyCount:
    count = RekeyCount()
    for key in referenced_keys():
        blob_rekey_count(key, count)
    return count
