"""`python manage.py console_user NAME --role ROLE`: create a console login (or change its role),
with the password from a file (--password-file; `-` reads it from standard input), or asked at
the terminal. The role is one Django group (admin, operator, viewer, auditor); `--deactivate` turns a
login off without losing its audit trail."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Any

from django.contrib.auth.models import Group, User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from fhirai.api.models import Role


class Command(BaseCommand):
    help = "Create or update a console login with one role (admin, operator, viewer, auditor)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--role", choices=Role.values, required=False)
        parser.add_argument("--password-file", type=Path, help="read the password from this file")
        parser.add_argument("--deactivate", action="store_true", help="turn the login off")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"]
        user = User.objects.filter(username=name).first()
        if options["deactivate"]:
            if user is None:
                raise CommandError(f"no console user {name}")
            User.objects.filter(pk=user.pk).update(is_active=False)
            self.stdout.write(f"{name} can no longer log in")
            return
        if user is None and not options["role"]:
            raise CommandError("a new console user needs --role")
        password = self._password(options, required=user is None)
        with transaction.atomic():
            if user is None:
                user = User(username=name)
            if password:
                try:
                    validate_password(password, user)
                except ValidationError as exc:
                    raise CommandError(" ".join(exc.messages)) from None
                user.set_password(password)
            user.is_active = True
            user.save()
            if options["role"]:
                user.groups.remove(*Group.objects.filter(name__in=Role.values))
                user.groups.add(Group.objects.get_or_create(name=options["role"])[0])
        roles = ", ".join(user.groups.filter(name__in=Role.values).values_list("name", flat=True))
        self.stdout.write(f"console user {name}: {roles or 'no role'}")

    def _password(self, options: dict[str, Any], *, required: bool) -> str:
        if options["password_file"]:
            if str(options["password_file"]) == "-":
                return sys.stdin.readline().strip()
            return options["password_file"].read_text().strip()
        if not required:
            return ""
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise CommandError("the passwords differ")
        return first
