"""The Celery app and its queues: `default` (ingest, assembly, de-id, write-back) and `inference`
(model work). This is wiring: the domain hands work to the outside through dispatch() by task name,
so it never imports workers/."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from django.db import transaction
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirai.settings")

app = Celery("fhirai")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("inference"))
app.conf.imports = ("workers.tasks",)  # loaded by workers at start; senders dispatch by name


# Task names: the domain's only knowledge of workers/ (see workers/tasks.py).
TASK_DEIDENTIFY = "workers.tasks.study_deidentify"
TASK_INFER = "workers.tasks.study_infer"
TASK_DELIVER = "workers.tasks.delivery_attempt"
TASK_MESSAGES_PROCESS = "workers.tasks.messages_process"
TASK_APP_ACK = "workers.tasks.message_app_ack"
TASK_REPORT_DEIDENTIFY = "workers.tasks.clinical_report_deidentify"
TASK_WEBHOOK_DELIVER = "workers.tasks.webhook_deliver"
TASK_PRIOR_FETCH = "workers.tasks.prior_fetch"


def dispatch(task_name: str, *args: Any) -> None:
    """Send a task by name. Arguments are ids and pseudonyms only: the queue is a PHI boundary."""
    app.send_task(task_name, args=args)


def dispatch_on_commit(task_name: str, *args: Any) -> None:
    """Dispatch once the surrounding transaction commits. A broker that is down then is logged,
    not raised: the work is already durable and pipeline_sweep dispatches it again."""
    transaction.on_commit(lambda: dispatch(task_name, *args), robust=True)
