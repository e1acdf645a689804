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


def referenced_keys() -> Iterator[str]:
    """Each blob key a row refers to, once."""
    seen: set[str] = set()
    sources = [
        Instance.objects.values_list("blob_key", flat=True),
        Instance.objects.values_list("deid_blob_key", flat=True),
        Rejection.objects.values_list("blob_key", flat=True),
        ClinicalReport.objects.values_list("deid_blob_key", flat=True),
        InferenceJob.objects.values_list("sr_blob_key", flat=True),
        InferenceJob.objects.values_list("key_image_blob_key", flat=True),
    ]
    for qs in sources:
        for key in qs.iterator(chunk_size=2000):
            if key and key != WITHHELD and key not in seen:
                seen.add(key)
                yield key


def blobs_rekey() -> RekeyCount:
    count = RekeyCount()
    for key in referenced_keys():
        try:
            if blobs.rekey(key):
                count.rewritten += 1
            else:
                count.current += 1
        except NotFound:
            count.missing += 1
    return count
