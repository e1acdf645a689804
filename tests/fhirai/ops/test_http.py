"""The web server behind a proxy (waitress, as `manage.py http` runs it): with FHIRAI_TRUSTED_PROXY
the client's address and scheme come from X-Forwarded-For and X-Forwarded-Proto, so the login
throttle counts per client and HTTPS is seen as HTTPS; without it those headers are dropped."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from django.core.handlers.wsgi import WSGIHandler
from django.db import connections
from waitress.server import create_server

from fhirai.api.models import LoginFailure
from fhirai.ops.management.commands.http import proxy_options

pytestmark = pytest.mark.django_db(transaction=True)  # the server's threads see the rows


@contextmanager
def serving() -> Iterator[str]:
    """The product's WSGI app (built now, so it reads the settings as overridden) under waitress
    with the options `manage.py http` gives it, on a free loopback port."""
    handler = WSGIHandler()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        try:
            return handler(environ, start_response)
        finally:
            connections.close_all()  # no connection left in the server's threads after the test

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = create_server(
        app, sockets=[sock], threads=2, clear_untrusted_proxy_headers=True, **proxy_options()
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.close()
        server.task_dispatcher.shutdown()


def _failed_login(base: str, forwarded_for: str) -> None:
    session = requests.Session()
    session.get(f"{base}/login/", timeout=30)
    response = session.post(
        f"{base}/login/",
        data={"username": "nobody", "password": "wrong", "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"X-Forwarded-For": forwarded_for},
        timeout=30,
    )
    assert response.status_code == 200, response.text[:500]


def test_behind_a_trusted_proxy_the_client_address_and_https_come_from_its_headers(settings):
    settings.FHIRAI_TRUSTED_PROXY = "127.0.0.1"
    settings.SECURE_HSTS_SECONDS = 600
    with serving() as base:
        _failed_login(base, "203.0.113.5")
        css = requests.get(
            f"{base}/static/console/console.css", headers={"X-Forwarded-Proto": "https"}, timeout=30
        )
    assert LoginFailure.objects.get().address == "203.0.113.5"
    assert css.headers.get("Strict-Transport-Security") == "max-age=600"  # seen as HTTPS


def test_without_a_trusted_proxy_forwarded_headers_are_ignored(settings):
    settings.FHIRAI_TRUSTED_PROXY = ""
    settings.SECURE_HSTS_SECONDS = 600
    with serving() as base:
        _failed_login(base, "203.0.113.5")
        css = requests.get(
            f"{base}/static/console/console.css", headers={"X-Forwarded-Proto": "https"}, timeout=30
        )
    assert LoginFailure.objects.get().address == "127.0.0.1"
    assert "Strict-Transport-Security" not in css.headers
