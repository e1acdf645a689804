"""Worker heartbeats for the console: when a Celery worker is ready it records what it is (node
name, pid, queues, concurrency, device, models loaded) in fhirai.ops WorkerStatus, then again
every HEARTBEAT_SECONDS from a daemon thread, and removes its row when it stops cleanly; a worker
that dies stops beating and the dashboard shows it as stale.

Celery's own heartbeat_sent signal fires only with task events on (-E), hence the thread. The
device is read without side effects: CUDA is named only where this process has already
initialised it (an inference worker with its models on the GPU), never initialised here (a
forked pool with CUDA initialised in the parent breaks, and the default worker has no use for it).
A heartbeat that cannot reach the database is logged and tried again at the next beat: it never
stops the worker. Loaded by one import line in workers/tasks.py."""

from __future__ import annotations

import logging
import os
import sys
import threading
from datetime import timedelta
from typing import Any

from celery.signals import worker_ready, worker_shutting_down
from django.db import connection
from django.utils import timezone

from fhirai.ops.models import worker_status_forget, worker_status_prune, worker_status_upsert

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 15.0
PRUNE_AFTER = timedelta(days=7)


def device_name() -> str:
    """ "cuda:N <name>" when this process already uses CUDA through torch, else "cpu"."""
    torch = sys.modules.get("torch")
    if torch is None:
        return "cpu"
    try:
        if not torch.cuda.is_initialized():
            return "cpu"
        index = torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    except Exception:  # noqa: BLE001 - a status line must never fail the worker
        return "cpu"


def loaded_models() -> list[str]:
    """name:version of the models this process has loaded (the inference runtime's own table;
    empty where the runtime was never imported)."""
    runtime = sys.modules.get("workers.inference.runtime")
    if runtime is None:
        return []
    return [f"{name}:{version}" for name, version in sorted(getattr(runtime, "_loaded", {}))]


def _close_if_idle() -> None:
    """One short connection per beat: nothing held between beats or across a fork (a caller
    inside a transaction, such as a test, keeps its connection)."""
    if not connection.in_atomic_block:
        connection.close()


class Heartbeat:
    """One worker process's beats (the facts that do not change are taken once, at ready)."""

    def __init__(self, hostname: str, *, queues: list[str], concurrency: int) -> None:
        self.hostname = hostname
        self.pid = os.getpid()
        self.queues = queues
        self.concurrency = concurrency
        self.started_at = timezone.now()
        self.stop = threading.Event()
        self.failing = False

    def beat(self) -> bool:
        """Upsert this worker's row; True when it was written."""
        try:
            worker_status_upsert(
                self.hostname,
                pid=self.pid,
                queues=self.queues,
                concurrency=self.concurrency,
                device=device_name(),
                loaded_models=loaded_models(),
                started_at=self.started_at,
            )
        except Exception as exc:  # noqa: BLE001 - the database may be away; the worker goes on
            if not self.failing:
                log.warning(
                    "worker status: heartbeat not recorded (%s); retrying every %.0f s",
                    exc,
                    HEARTBEAT_SECONDS,
                )
            self.failing = True
            return False
        finally:
            _close_if_idle()
        if self.failing:
            log.info("worker status: heartbeat recorded again")
        self.failing = False
        return True

    def run(self) -> None:
        try:
            worker_status_prune(older_than=timezone.now() - PRUNE_AFTER)
        except Exception:  # noqa: BLE001, S110  # nosec B110  # housekeeping only: the next start prunes again
            pass
        self.beat()
        while not self.stop.wait(HEARTBEAT_SECONDS):
            self.beat()

    def start(self) -> None:
        """Beat now and every HEARTBEAT_SECONDS, all in a daemon thread with its own connection
        (the worker's main thread keeps its connection and its timing to itself)."""
        threading.Thread(target=self.run, name="fhirai-worker-status", daemon=True).start()

    def forget(self, *, timeout: float = 2.0) -> None:
        """Stop beating and delete the row, from a thread of its own: this runs inside Celery's
        signal handler, which may have interrupted the main thread in the middle of a query."""

        def delete() -> None:
            try:
                worker_status_forget(self.hostname, pid=self.pid)
            except Exception:  # noqa: BLE001, S110  # nosec B110  # the row goes stale instead and is pruned later
                pass
            finally:
                _close_if_idle()

        self.stop.set()
        thread = threading.Thread(target=delete, name="fhirai-worker-status-stop", daemon=True)
        thread.start()
        thread.join(timeout)


_current: Heartbeat | None = None


@worker_ready.connect
def worker_status_start(sender: Any, **kwargs: Any) -> None:
    """worker_ready (sender: the consumer): record the worker and start beating."""
    global _current
    queues = sorted((sender.app.amqp.queues.consume_from or {}).keys())
    controller = getattr(sender, "controller", None)
    concurrency = int(getattr(controller, "concurrency", 0) or 0)
    _current = Heartbeat(str(sender.hostname), queues=queues, concurrency=concurrency)
    _current.start()


@worker_shutting_down.connect
def worker_status_stop(sender: Any, **kwargs: Any) -> None:
    """A clean stop (SIGTERM/SIGINT): stop beating and leave the list."""
    if _current is not None and str(sender) == _current.hostname:
        _current.forget()
