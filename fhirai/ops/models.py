"""Operations records. WorkerStatus: each Celery worker's last heartbeat, written by the worker
itself (workers.status), so the console can say which workers are up, what they consume and on
which device, without asking the broker (a broadcast ping blocks, and says nothing about GPUs)."""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.utils import timezone


class WorkerStatus(models.Model):
    """One worker process, keyed by its Celery node name and pid (a restart is a new row)."""

    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.CharField(max_length=255, blank=True, default="")
    concurrency = models.PositiveIntegerField(default=0)
    device = models.CharField(max_length=128, blank=True, default="")
    loaded_models = models.TextField(blank=True, default="")
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hostname", "pid"], name="worker_status_process")]
        indexes = [models.Index(fields=["last_seen"], name="worker_status_last_seen")]
        verbose_name_plural = "worker statuses"

    def __str__(self) -> str:
        return f"worker {self.hostname} pid {self.pid}"


def worker_status_upsert(
    hostname: str,
    *,
    pid: int,
    queues: list[str],
    concurrency: int,
    device: str,
    loaded_models: list[str],
    started_at: datetime,
    now: datetime | None = None,
) -> WorkerStatus:
    """Record a heartbeat: the row of (hostname, pid) says what the worker is and when it was
    last alive. Idempotent (update, else create), so a repeated or late beat is harmless."""
    now = now or timezone.now()
    facts = {
        "queues": ",".join(sorted(queues))[:255],
        "concurrency": max(0, int(concurrency)),
        "device": device[:128],
        "loaded_models": ", ".join(loaded_models),
        "last_seen": now,
    }
    row, _ = WorkerStatus.objects.update_or_create(
        hostname=hostname[:255],
        pid=pid,
        defaults=facts,
        create_defaults={**facts, "started_at": started_at},
    )
    return row


def worker_status_forget(hostname: str, *, pid: int) -> None:
    """A worker that stops cleanly leaves the list (only a silent one shows as stale)."""
    WorkerStatus.objects.filter(hostname=hostname[:255], pid=pid).delete()


def worker_status_prune(*, older_than: datetime) -> int:
    """Drop rows of workers gone long ago (called at worker start; the table stays small)."""
    deleted, _ = WorkerStatus.objects.filter(last_seen__lt=older_than).delete()
    return deleted


class KeyRotation(models.Model):
    """Background re-encryption under the current (first) key of a store ("blobs": FHIRAI_BLOB_KEYS,
    "vault": FHIRAI_VAULT_KEYS): how far it got. One row per store and key; a new first key starts
    a new row from the beginning, and `finished_at` says when nothing is left under older keys
    (then the old secrets can be dropped from the list)."""

    store = models.CharField(max_length=16)
    key_id = models.CharField(max_length=16)
    source = models.PositiveSmallIntegerField(default=0)  # blobs: which referencing column is being walked
    cursor = models.BigIntegerField(default=0)  # the last row id done in that source
    rewritten = models.BigIntegerField(default=0)
    current = models.BigIntegerField(default=0)  # found already under the key
    missing = models.BigIntegerField(default=0)  # referenced, but not in the blob store
    started_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["store", "key_id"], name="key_rotation_once")]

    def __str__(self) -> str:
        state = "done" if self.finished_at else "running"
        return f"{self.store} under key {self.key_id}: {state}, {self.rewritten} re-encrypted"
