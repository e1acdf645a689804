"""`python manage.py audit_verify`: recompute the access audit's hash chain; exit 1 at the first row
that was changed, removed or inserted afterwards (its id and why)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from fhirai.api.access import audit_verify


class Command(BaseCommand):
    help = "Check the access audit's hash chain (tamper evidence)."

    def handle(self, *args: Any, **options: Any) -> None:
        check = audit_verify()
        if check.broken_at is not None:
            raise CommandError(f"audit chain broken at access record {check.broken_at}: {check.reason}")
        older = f" ({check.unchained} older records from before the chain)" if check.unchained else ""
        self.stdout.write(f"audit chain intact: {check.rows} access records{older}")
