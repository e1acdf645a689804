"""`python manage.py http`: the web server (admin UI, API, FHIR) on FHIRAI_HTTP_PORT with waitress.
Production may use any WSGI/ASGI server on fhirai.wsgi / fhirai.asgi instead."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from waitress import serve

from fhirai.wsgi import application


class Command(BaseCommand):
    help = "Serve HTTP on FHIRAI_BIND_ADDRESS:FHIRAI_HTTP_PORT until SIGTERM/SIGINT."

    def handle(self, *args: Any, **options: Any) -> None:
        serve(
            application,
            host=settings.FHIRAI_BIND_ADDRESS,
            port=settings.FHIRAI_HTTP_PORT,
            threads=settings.FHIRAI_HTTP_THREADS,
            ident="fhirai",
            clear_untrusted_proxy_headers=True,
        )
