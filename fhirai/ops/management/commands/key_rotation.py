"""`python manage.py key_rotation`: where the background re-encryption stands after a key change
(per store and key: re-encrypted, already current, missing, done or running); `--run` advances it
in the foreground until nothing is left, as the workers do in steps."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from fhirai.ops.key_rotation import keys_rotate
from fhirai.ops.models import KeyRotation


class Command(BaseCommand):
    help = "Show (or, with --run, finish) the background re-encryption under the current keys."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--run", action="store_true", help="advance it here until done")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["run"]:
            while not keys_rotate(budget_seconds=60):
                pass
        rows = KeyRotation.objects.order_by("store", "-started_at")
        if not rows:
            self.stdout.write("no key rotation recorded (no encryption key has changed)")
        for row in rows:
            state = f"done {row.finished_at:%Y-%m-%d %H:%M}" if row.finished_at else "running"
            self.stdout.write(
                f"{row.store} under key {row.key_id}: {state}; {row.rewritten} re-encrypted, "
                f"{row.current} already current, {row.missing} missing"
            )
