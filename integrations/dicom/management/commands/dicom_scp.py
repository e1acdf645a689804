"""`python manage.py dicom_scp`: the DICOM listener alone (production: one per host as needed)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand

from integrations.dicom.scp import servers_start


class Command(BaseCommand):
    help = (
        "Run the DICOM SCP (C-ECHO, C-STORE) on FHIRAI_DICOM_PORT (and FHIRAI_DICOM_TLS_PORT) "
        "until SIGTERM/SIGINT."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        servers = servers_start()
        stop.wait()
        # shutdown() stops accepting; associations in progress finish their current C-STORE,
        # whose Success is only sent after its commit.
        for server in servers:
            server.shutdown()
