"""`python manage.py vault_rekey`: after adding a new first key to FHIRAI_VAULT_KEYS, re-encrypt
every vault entry under it; then the old key can be dropped from the list."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from fhirai.deid.vault import vault_rekey


class Command(BaseCommand):
    help = "Re-encrypt the re-identification vault under the first key of FHIRAI_VAULT_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        count = vault_rekey()
        self.stdout.write(f"re-encrypted {count} vault entries")
