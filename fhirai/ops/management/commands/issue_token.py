"""`python manage.py issue_token NAME [--role ROLE]`: a new API token, printed once on the last
line (test harnesses take `tail -1`); only its hash is kept."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from fhirai.api.models import Role
from fhirai.api.tokens import token_issue


class Command(BaseCommand):
    help = "Issue an API token (shown once) for a client, with one role."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="who the token is for (shown in the audit trail)")
        parser.add_argument("--role", choices=Role.values, default=Role.VIEWER.value)

    def handle(self, *args: Any, **options: Any) -> None:
        row, token = token_issue(options["name"][:64], role=options["role"])
        self.stderr.write(
            f"token {row.prefix} for {row.name} ({row.role}); store it now, it is not shown again:"
        )
        self.stdout.write(token)
