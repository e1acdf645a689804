"""Runs the real product (`python manage.py run`) as a separate process group on free loopback
ports, for end-to-end tests: real sockets, real Celery worker processes, real PostgreSQL/Redis."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class FreshDatabase:
    """A new PostgreSQL database for one product run, dropped afterwards."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url.rsplit("/", 1)[0] + "/postgres"
        self.name = f"fhirai_e2e_{uuid.uuid4().hex[:10]}"
        self.url = admin_url.rsplit("/", 1)[0] + "/" + self.name

    def __enter__(self) -> FreshDatabase:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def product_env(data_dir: Path, ports: tuple[int, int, int], env: dict[str, str]) -> dict[str, str]:
    """The environment of an installation's processes: this process's own minus fhirai's, Django's
    and pytest's settings, then the data dir and the HTTP, DICOM and MLLP ports, then `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FHIRAI_", "DJANGO_", "PYTEST"))}
    base.pop("DATABASE_URL", None)
    base.pop("CELERY_BROKER_URL", None)
    http_port, dicom_port, mllp_port = ports
    return {
        **base,
        "DJANGO_SETTINGS_MODULE": "fhirai.settings",
        "FHIRAI_DATA_DIR": str(data_dir),
        "FHIRAI_HTTP_PORT": str(http_port),
        "FHIRAI_DICOM_PORT": str(dicom_port),
        "FHIRAI_MLLP_PORT": str(mllp_port),
        **env,
    }


def manage(env: dict[str, str], *args: str) -> str:
    """`python manage.py ARGS` in that environment; its stdout (asserts it succeeded)."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def http_healthy(port: int) -> bool:
    """Whether the HTTP server on `port` answers /healthz with 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def fhir_get(port: int, path: str, *, timeout: float, token: str = "") -> dict[str, Any]:
    """GET a FHIR path on the HTTP server on `port`, as JSON (with the API token, as a client of an
    installation must: the facade requires one by default)."""
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class Product:
    """One installation: its own data dir, ports and environment; start/stop/kill as an operator would."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.http_port, self.dicom_port, self.mllp_port = free_port(), free_port(), free_port()
        self.env = product_env(
            data_dir,
            (self.http_port, self.dicom_port, self.mllp_port),
            {
                "FHIRAI_STUDY_QUIET_SECONDS": "2",
                "FHIRAI_SWEEP_SECONDS": "0.5",
                "FHIRAI_WORKER_CONCURRENCY": "1",
                "FHIRAI_DEID_SECRET": "e2e-secret",
                **env,
            },
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "run.log"
        self._token = ""

    @property
    def token(self) -> str:
        """An admin API token of this installation (issued once, on first use)."""
        if not self._token:
            self._token = self.manage("issue_token", "e2e", "--role", "admin").strip()
        return self._token

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def manage(self, *args: str) -> str:
        return manage(self.env, *args)

    def start(self, timeout: float = 90) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "run"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"product exited: {self.tail()}")
            # HTTP first: each bare TCP connect to the DICOM port holds one association slot until
            # its ARTIM timer (30 s) ends, so probing it every 0.25 s while HTTP is still starting
            # can use up FHIRAI_DICOM_MAX_ASSOCIATIONS before the test's own storescu connects.
            if self._healthy() and port_open(self.dicom_port):
                return
            time.sleep(0.25)
        raise AssertionError(f"product did not start: {self.tail()}")

    def _healthy(self) -> bool:
        return http_healthy(self.http_port)

    def stop(self) -> None:
        self._signal(signal.SIGTERM, wait=45)

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, as in a power cut or OOM kill."""
        self._signal(signal.SIGKILL, wait=10)

    def _signal(self, sig: int, wait: float) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        deadline = time.monotonic() + wait  # children of the group may outlive the supervisor briefly
        while time.monotonic() < deadline and _group_alive(self.process.pid):
            time.sleep(0.2)
        if _group_alive(self.process.pid):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def get(self, path: str) -> dict[str, Any]:
        return fhir_get(self.http_port, path, timeout=10, token=self.token)

    def wait_for(self, path: str, predicate: Any, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = self.get(path)
            if predicate(body):
                return body
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting on {path}: last {json.dumps(body)[:500]}\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def store_files(directory: Path, port: int, ae: str = "FHIRAI") -> None:
    """C-STORE every file in `directory` with dcmtk's storescu (the outside peer) when installed,
    else with a pynetdicom SCU."""
    storescu = shutil.which("storescu")
    if storescu:
        done = subprocess.run(
            [storescu, "-aec", ae, "+sd", "127.0.0.1", str(port), str(directory)],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    scu = AE(ae_title="E2ESCU")
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", port, ae_title=ae)
    assert assoc.is_established
    try:
        for path in sorted(directory.iterdir()):
            status = assoc.send_c_store(dcmread(path))
            assert status.Status == 0, hex(status.Status)
    finally:
        assoc.release()
