"""`python manage.py run`: the whole product on one machine. Migrates an embedded database,
re-dispatches whatever the previous run left in flight, then starts and supervises the HTTP
server, the DICOM SCP and Celery workers for the `default` (with the beat that drives the sweep)
and `inference` queues. A child that dies is restarted with backoff; SIGTERM or Ctrl-C stops all
children cleanly (each finishes what it is doing), then exits."""

from __future__ import annotations

import logging
import os
import signal
import subprocess  # nosec B404  # runs this product's own commands (fixed argv, no shell)
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from fhirai.sweep import pipeline_recover

log = logging.getLogger("fhirai.run")
STOP_GRACE_SECONDS = 30


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv)  # nosec B603  # argv built in children() from sys.executable, manage.py and settings; no shell
        self.started_at = time.monotonic()
        log.info("started %s (pid %s)", self.name, self.process.pid)


def children() -> list[Child]:
    """The processes of the single-machine product."""
    py, manage = sys.executable, os.path.join(settings.BASE_DIR, "manage.py")
    celery = [
        py,
        "-m",
        "celery",
        "-A",
        "fhirai",
        "worker",
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        "INFO",
    ]
    return [
        Child("http", [py, manage, "http"]),
        Child("dicom_scp", [py, manage, "dicom_scp"]),
        Child("mllp", [py, manage, "mllp"]),
        Child(
            "worker-default",
            [
                *celery,
                "-Q",
                "default",
                "-n",
                "default@%h",
                "-c",
                str(settings.FHIRAI_WORKER_CONCURRENCY),
                "-B",
                "-s",
                str(settings.CELERY_BEAT_SCHEDULE_FILENAME),
            ],
        ),
        # threads pool: one process (each model loads once, CUDA is never forked), many task threads
        # whose requests each model's micro-batcher gathers into batches.
        Child(
            "worker-inference",
            [
                *celery,
                "-Q",
                "inference",
                "-n",
                "inference@%h",
                "-P",
                "threads",
                "-c",
                str(settings.FHIRAI_INFERENCE_CONCURRENCY),
            ],
        ),
    ]


class Command(BaseCommand):
    help = "Run the whole product (HTTP, DICOM SCP, MLLP, Celery workers) until SIGTERM/SIGINT."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--no-recover",
            action="store_true",
            help="do not re-dispatch in-flight work at start (other hosts' workers own it)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
            call_command("migrate", interactive=False, verbosity=0)
        if not options["no_recover"]:
            counts = pipeline_recover()
            if any(counts.values()):
                log.info("recovered in-flight work: %s", counts)
        stopping = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        procs = children()
        for child in procs:
            child.start()
        scheme = "https" if settings.FHIRAI_HTTP_TLS_CERT else "http"
        dicom = (
            f"DICOM {settings.FHIRAI_DICOM_AE}@{settings.FHIRAI_BIND_ADDRESS}:{settings.FHIRAI_DICOM_PORT}"
        )
        if settings.FHIRAI_DICOM_TLS_CERT:
            dicom += (
                f" (TLS on {settings.FHIRAI_DICOM_TLS_PORT})" if settings.FHIRAI_DICOM_TLS_PORT else " (TLS)"
            )
        self.stdout.write(
            f"fhirai running: {scheme}://{settings.FHIRAI_BIND_ADDRESS}:{settings.FHIRAI_HTTP_PORT}/ {dicom}"
        )
        self.stdout.flush()
        while not stopping:
            time.sleep(0.5)
            for child in procs:
                assert child.process is not None  # nosec B101  # narrows the type for mypy; under -O the next line fails the same way
                code = child.process.poll()
                if code is None or stopping:
                    continue
                delay = min(30.0, 2.0**child.restarts) if time.monotonic() - child.started_at < 60 else 1.0
                child.restarts = child.restarts + 1 if delay > 1.0 else 0
                log.error("%s exited with %s; restarting in %.0f s", child.name, code, delay)
                time.sleep(delay)
                child.start()
        self._stop(procs)

    def _stop(self, procs: list[Child]) -> None:
        for child in procs:
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in procs:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %s s; killing it", child.name, STOP_GRACE_SECONDS)
                child.process.kill()
                child.process.wait()
        log.info("fhirai stopped")
