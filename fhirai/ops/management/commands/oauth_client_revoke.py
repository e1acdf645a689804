"""`python manage.py oauth_client_revoke NAME|CLIENT_ID`: revoke the live OAuth2 clients with that
name or client id; their access tokens stop working at once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fhirai.api.clients import client_revoke


class Command(BaseCommand):
    help = "Revoke OAuth2 clients by name or client id (their tokens stop working)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name_or_client_id")

    def handle(self, *args: Any, **options: Any) -> None:
        count = client_revoke(options["name_or_client_id"])
        if not count:
            raise CommandError(f"no live client named or with id {options['name_or_client_id']!r}")
        self.stdout.write(f"revoked {count} client(s)")
