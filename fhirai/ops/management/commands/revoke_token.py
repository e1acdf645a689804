"""`python manage.py revoke_token NAME|PREFIX`: revoke every live API token with that name or prefix."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fhirai.api.tokens import token_revoke


class Command(BaseCommand):
    help = "Revoke API tokens by client name or token prefix."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name_or_prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        count = token_revoke(options["name_or_prefix"])
        if not count:
            raise CommandError(f"no live token named or prefixed {options['name_or_prefix']!r}")
        self.stdout.write(f"revoked {count} token(s)")
