"""`python manage.py mllp`: the HL7 v2 MLLP listener alone (production: behind the engine's VIP)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import uvloop
from django.conf import settings
from django.core.management.base import BaseCommand

from integrations.hl7.handlers import Committer, MessageHandler
from integrations.hl7.mllp import Server, tls_context


async def serve(stop: asyncio.Event, *, port: int | None = None) -> None:
    committer = Committer(settings.FHIRAI_MLLP_COMMITTERS)
    committer.start()
    handler = MessageHandler(committer)
    server = Server(
        handler,
        max_bytes=settings.FHIRAI_MLLP_MAX_BYTES,
        allow=handler.allowed_networks,
        idle_seconds=settings.FHIRAI_MLLP_IDLE_SECONDS,
        on_abandoned=handler.abandoned,
        on_refused=handler.refused,
    )
    tls = tls_context(
        settings.FHIRAI_MLLP_TLS_CERT, settings.FHIRAI_MLLP_TLS_KEY, settings.FHIRAI_MLLP_TLS_CA
    )
    await server.start(
        settings.FHIRAI_BIND_ADDRESS, port if port is not None else settings.FHIRAI_MLLP_PORT, tls
    )
    await stop.wait()
    await server.stop()
    await committer.stop()


class Command(BaseCommand):
    help = "Run the HL7 v2 MLLP listener on FHIRAI_MLLP_PORT until SIGTERM/SIGINT."

    def handle(self, *args: Any, **options: Any) -> None:
        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await serve(stop)

        # uvloop: the same asyncio API on libuv, about twice as fast per message on this path.
        uvloop.run(main())
