"""A PostgreSQL cluster and a redis-server of a test's own, on free loopback ports in a temp dir, so
fault tests can stop, crash and restart them without touching the machine's shared services."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis

from tests.support.product import free_port


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server program (initdb, pg_ctl): on PATH, or Debian's versioned directory."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres() -> list[str]:
    """initdb and the server refuse to run as root: run them as the postgres account then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PgCluster:
    """initdb + pg_ctl in `root`; `stop()` is an immediate shutdown (no checkpoint: a crash to the
    server's data, recovered from the WAL at the next start)."""

    def __init__(self) -> None:
        # Its own temp dir, not the test's: pytest's tmp_path sits under a root-only directory
        # that the postgres account cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="fhirai-pg-"))
        self.data = self.root / "pgdata"
        self.socket_dir = self.root / "pgsock"
        self.logfile = self.root / "postgres.log"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> PgCluster:
        initdb = pg_bin("initdb")
        assert initdb, "initdb not installed"
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self.logfile.touch()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.socket_dir, "postgres")
            shutil.chown(self.logfile, "postgres")
        subprocess.run(
            [*_as_postgres(), initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.socket_dir}'\nmax_connections = 200\n"
                "shared_buffers = 64MB\n"
            )
        return self

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        pg_ctl = pg_bin("pg_ctl")
        assert pg_ctl, "pg_ctl not installed"
        subprocess.run(
            [*_as_postgres(), pg_ctl, "-D", str(self.data), "-l", str(self.logfile), *args],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        self._ctl("-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise AssertionError("the test's PostgreSQL did not come up")

    def stop(self, mode: str = "immediate") -> None:
        self._ctl("-w", "-m", mode, "stop")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def close(self) -> None:
        try:
            self.stop("immediate")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """redis-server on a free port, keeping nothing on disk (a restart loses every queued message,
    the harshest broker restart there is)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError("the test's redis-server did not come up")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.kill()
