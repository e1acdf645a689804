"""`python manage.py blob_rekey`: after adding a new first key to FHIRAI_BLOB_KEYS, re-encrypt every
blob the database refers to under it, while the product runs; then the old key can be dropped."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from fhirai.ops.blob_rekey import blobs_rekey


class Command(BaseCommand):
    help = "Re-encrypt blobs at rest under the first key of FHIRAI_BLOB_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        count = blobs_rekey()
        self.stdout.write(
            f"re-encrypted {count.rewritten} blobs; {count.current} already under the current key; "
            f"{count.missing} referenced but not in the store"
        )
