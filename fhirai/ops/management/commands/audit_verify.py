"""`python manage.py audit_verify`: seal what is pending, then recompute the access audit's hash chain; exit 1 at the first row
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
        pending = f" ({check.unsealed} recorded during the check, not sealed yet)" if check.unsealed else ""
        self.stdout.write(f"audit chain intact: {check.rows} access records{pending}")
