"""`python manage.py dicom_conformance`: print the DICOM Conformance Statement for this site's settings."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from integrations.dicom.conformance import conformance_statement


class Command(BaseCommand):
    help = "Print the DICOM Conformance Statement (PS3.2 layout) of the SCP as configured."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(conformance_statement())
