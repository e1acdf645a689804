"""`python manage.py model_register PACKAGE_DIR [--disabled]`: register a model package (a directory
with manifest.json and the weights) so routing can send studies or reports to it; see
fhirai/routing/manifest.py for the manifest and README "Models" for the workflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fhirai.routing.manifest import ManifestError
from fhirai.routing.registry import model_register


class Command(BaseCommand):
    help = "Register a model package (manifest.json + weights) in the model registry."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("package", type=Path, help="the package directory")
        parser.add_argument("--disabled", action="store_true", help="register it switched off")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            record, created = model_register(options["package"], enabled=not options["disabled"])
        except ManifestError as exc:
            raise CommandError(f"not registered: {exc}") from None
        state = "enabled" if record.enabled else "disabled"
        verb = "registered" if created else "already registered (identical package)"
        self.stdout.write(f"{record.name} {record.version} {verb}, {state}: {record.title} [{record.format}]")
