"""`manage.py http` with FHIRAI_HTTP_TLS_CERT: HTTPS (cheroot, the fhirai.tls profile) as a separate
process, with a certificate made here by the openssl CLI; HSTS and secure cookies are on, plain HTTP
to the port gets nowhere, and a TLS 1.1 client is refused."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from django.db import connection

from tests.support.certs import Certs, certs_make
from tests.support.product import ROOT, free_port

pytestmark = pytest.mark.django_db(transaction=True)  # the server process reads the test database


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return certs_make(tmp_path_factory.mktemp("certs"))


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@contextmanager
def https_server(certs: Certs, tmp_path: Path, **extra: str) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FHIRAI_", "DJANGO_", "PYTEST"))}
    env.update(
        DATABASE_URL=_database_url(),
        FHIRAI_DATA_DIR=str(tmp_path / "var"),
        FHIRAI_HTTP_PORT=str(port),
        FHIRAI_HTTP_TLS_CERT=str(certs.server_cert),
        FHIRAI_HTTP_TLS_KEY=str(certs.server_key),
        **extra,
    )
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "http"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"https://localhost:{port}/healthz", verify=str(certs.ca), timeout=5)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"manage.py http did not serve HTTPS: {output[-3000:]}")
                time.sleep(0.2)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        if process.stdout:
            process.stdout.close()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_https_serves_the_product_with_hsts(certs, tmp_path, processes):
    with https_server(certs, tmp_path, FHIRAI_HTTP_PROCESSES=processes) as port:
        base = f"https://localhost:{port}"
        health = requests.get(f"{base}/healthz", verify=str(certs.ca), timeout=30)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert health.headers["Strict-Transport-Security"].startswith("max-age=31536000")
        metadata = requests.get(f"{base}/fhir/metadata", verify=str(certs.ca), timeout=30)
        assert metadata.status_code == 200 and metadata.json()["resourceType"] == "CapabilityStatement"
        login = requests.get(f"{base}/login/", verify=str(certs.ca), timeout=30)
        assert login.cookies and all(c.secure for c in login.cookies)  # CSRF cookie: HTTPS only

        plain = None
        try:
            plain = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        except requests.ConnectionError:
            pass  # refused outright is as good as an error answer
        assert plain is None or plain.status_code == 400  # cheroot: "plain HTTP request to HTTPS port"


def test_https_refuses_tls_1_1(certs, tmp_path):
    with https_server(certs, tmp_path) as port:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(str(certs.ca))
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.warns(DeprecationWarning):
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with pytest.raises(ssl.SSLError):
                context.wrap_socket(raw, server_hostname="localhost")
        # and the server goes on serving
        assert requests.get(f"https://localhost:{port}/healthz", verify=str(certs.ca), timeout=30).ok


def test_https_with_fhirai_https_false_is_refused_at_startup(certs, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FHIRAI_", "DJANGO_", "PYTEST"))}
    env.update(
        FHIRAI_DATA_DIR=str(tmp_path / "var"),
        FHIRAI_HTTP_TLS_CERT=str(certs.server_cert),
        FHIRAI_HTTP_TLS_KEY=str(certs.server_key),
        FHIRAI_HTTPS="false",
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode != 0 and b"FHIRAI_HTTPS cannot be false" in result.stderr
