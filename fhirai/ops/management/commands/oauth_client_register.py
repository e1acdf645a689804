"""`python manage.py oauth_client_register NAME --role ROLE (--jwks FILE | --jwks-uri URL | --secret)
[--scope "system/Observation.rs ..."]`: a new OAuth2 machine client. Prints the client id on the
last line but one and, with --secret, the secret on the last line, once (only its hash is kept)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fhirai.api.clients import client_register
from fhirai.api.models import Role
from fhirai.api.oauth import token_endpoint_url
from fhirai.errors import InvalidInput


class Command(BaseCommand):
    help = "Register an OAuth2 client (SMART Backend Services keys, or a client secret)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="who the client is (shown in the audit trail)")
        parser.add_argument("--role", choices=Role.values, required=True, help="the ceiling of its tokens")
        how = parser.add_mutually_exclusive_group(required=True)
        how.add_argument("--jwks", type=Path, help="a file with the client's public keys (a JWKS)")
        how.add_argument("--jwks-uri", default="", help="https URL where the client publishes its JWKS")
        how.add_argument("--secret", action="store_true", help="generate a client secret (shown once)")
        parser.add_argument(
            "--scope", default="", help="SMART system scopes it may get (default: the role's)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        jwks = None
        if options["jwks"] is not None:
            try:
                jwks = json.loads(options["jwks"].read_text())
            except (OSError, ValueError) as exc:
                raise CommandError(f"--jwks: {exc}") from None
        try:
            client, secret = client_register(
                options["name"],
                role=options["role"],
                scope=options["scope"],
                jwks=jwks,
                jwks_uri=options["jwks_uri"],
                with_secret=options["secret"],
            )
        except InvalidInput as exc:
            raise CommandError(exc.detail) from None
        self.stderr.write(
            f"client {client.name} ({client.role}), scopes: {client.scope}; token endpoint {token_endpoint_url()}"
        )
        self.stdout.write(client.client_id)
        if secret:
            self.stderr.write("its secret follows; store it now, it is not shown again:")
            self.stdout.write(secret)
