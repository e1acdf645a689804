"""`python manage.py http`: the web server (console, API, FHIR) on FHIRAI_HTTP_PORT, in
FHIRAI_HTTP_PROCESSES processes: plain HTTP with waitress (behind a TLS-terminating proxy, or on a
trusted network), or HTTPS with cheroot when FHIRAI_HTTP_TLS_CERT is set (waitress has no TLS);
both serve the same WSGI app. Production may use any WSGI/ASGI server on fhirai.wsgi / fhirai.asgi
instead."""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from django.conf import settings
from django.core.management.base import BaseCommand
from waitress import serve

from fhirai.tls import server_context
from fhirai.wsgi import application


class Command(BaseCommand):
    help = "Serve HTTP on FHIRAI_BIND_ADDRESS:FHIRAI_HTTP_PORT until SIGTERM/SIGINT."

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.FHIRAI_HTTP_PROCESSES == 1:
            http_serve()
            return
        servers_run(settings.FHIRAI_HTTP_PROCESSES)


def http_serve() -> None:
    if settings.FHIRAI_HTTP_TLS_CERT:
        https_serve()
        return
    serve(
        application,
        sockets=[listening_socket()],
        threads=settings.FHIRAI_HTTP_THREADS,
        ident="fhirai",
        clear_untrusted_proxy_headers=True,
        **proxy_options(),
    )


def https_serve() -> None:
    """HTTPS on FHIRAI_HTTP_PORT with cheroot (CherryPy's WSGI server) and its builtin ssl adapter,
    given the fhirai.tls context (the BCP 195 profile); a plain HTTP request there is answered 400
    and never reaches the app. cheroot does each handshake on its accept thread within its
    connection timeout (10 s); with several processes the kernel spreads connections (SO_REUSEPORT)."""
    cert, key = settings.FHIRAI_HTTP_TLS_CERT, settings.FHIRAI_HTTP_TLS_KEY or None
    server = wsgi.Server(
        (settings.FHIRAI_BIND_ADDRESS, settings.FHIRAI_HTTP_PORT),
        application,
        numthreads=settings.FHIRAI_HTTP_THREADS,
        server_name="fhirai",
        request_queue_size=1024,
        reuse_port=settings.FHIRAI_HTTP_PROCESSES > 1,
    )
    adapter = BuiltinSSLAdapter(cert, key)
    adapter.context = server_context(cert, key or "")
    server.ssl_adapter = adapter
    server.start()


def proxy_options() -> dict[str, Any]:
    """With FHIRAI_TRUSTED_PROXY, requests from that address take the client's address and scheme
    from X-Forwarded-For and X-Forwarded-Proto (the login throttle counts per client, HTTPS is
    seen as HTTPS); from any other address those headers are removed."""
    if not settings.FHIRAI_TRUSTED_PROXY:
        return {}
    return {
        "trusted_proxy": settings.FHIRAI_TRUSTED_PROXY,
        "trusted_proxy_count": 1,
        "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"},
    }


def servers_run(count: int) -> None:
    """Fork `count` servers (before any database connection exists) and wait: SIGTERM/SIGINT stop
    them all; one that dies stops the rest and this exits non-zero, so `run` restarts the tier."""
    pids: list[int] = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM ends a child
            code = 0
            try:
                http_serve()
            except BaseException:  # noqa: BLE001 - the child must never return into the parent's code
                code = 1
            os._exit(code)
        pids.append(pid)
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in pids:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failed = False
    while pids:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        pids.remove(pid)
        if not stopping:
            failed = True
            stop(signal.SIGTERM, None)
    sys.exit(1 if failed else 0)


def listening_socket() -> socket.socket:
    """The HTTP port, bound with SO_REUSEPORT so that the servers each have their own socket and the
    kernel spreads connections over them (one Python process is one core: its GIL is the limit)."""
    family = socket.AF_INET6 if ":" in settings.FHIRAI_BIND_ADDRESS else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.FHIRAI_HTTP_PROCESSES > 1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.FHIRAI_BIND_ADDRESS, settings.FHIRAI_HTTP_PORT))
    sock.listen(1024)
    return sock
