"""Celery tasks: each loads by id and calls the domain function of the same name; the task owns
only its retry policy. study_infer is the one task on the `inference` queue: it sees blob keys of
de-identified data and sends its output back to the `default` queue, never touching the database."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import celeryd_after_setup

from fhirai import sweep
from fhirai.context import acks, messages, reports
from fhirai.deid import study as deid_study
from fhirai.errors import Unavailable
from fhirai.ops import key_rotation
from fhirai.results import writeback
from fhirai.routing import jobs, priors
from fhirai.webhooks import outbox as webhooks
from workers import status as _status  # noqa: F401 - connects the worker heartbeat signals (console dashboard)

log = logging.getLogger(__name__)
RETRY = {
    "acks_late": True,
    "autoretry_for": (Unavailable,),
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "max_retries": None,
}


@celeryd_after_setup.connect
def inference_warm_up(sender: str, instance: Any, **kwargs: Any) -> None:
    """A worker that consumes the `inference` queue loads and warms up its models before it takes
    the first task (FHIRAI_INFERENCE_PRELOAD), so no study waits for a model load."""
    if "inference" not in (instance.app.amqp.queues.consume_from or {}):
        return
    from workers.inference.runtime import models_preload

    loaded = models_preload()
    log.info("inference worker %s ready with %d model(s) loaded", sender, len(loaded))


@shared_task(name="workers.tasks.study_deidentify", **RETRY)
def study_deidentify(study_id: int) -> None:
    deid_study.study_deidentify(study_id)


@shared_task(name="workers.tasks.clinical_report_deidentify", **RETRY)
def clinical_report_deidentify(report_id: int) -> None:
    reports.clinical_report_deidentify(report_id)


@shared_task(name="workers.tasks.study_infer", acks_late=True, reject_on_worker_lost=True)
def study_infer(
    job_id: int,
    model: str,
    version: str,
    inputs: list[str],
    priors: list[str] | None = None,
    prior_days: int | None = None,
) -> None:
    from workers.inference.runtime import ModelInputError, run_model  # torch loads on inference hosts only

    try:
        output = run_model(model, version, inputs, prior_keys=priors or [], prior_days=prior_days)
    except ModelInputError as exc:
        log.warning("job %s: %s %s cannot run on its input: %s", job_id, model, version, exc)
        job_fail.apply_async(args=(job_id, str(exc)), queue="default")
        return
    job_record_result.apply_async(args=(job_id, output), queue="default")


@shared_task(name="workers.tasks.job_record_result", **RETRY)
def job_record_result(job_id: int, output: dict[str, Any]) -> None:
    jobs.job_record_result(job_id, output)


@shared_task(name="workers.tasks.job_fail", **RETRY)
def job_fail(job_id: int, error: str) -> None:
    jobs.job_fail(job_id, error)


@shared_task(name="workers.tasks.prior_fetch", **RETRY)
def prior_fetch(job_id: int) -> None:
    priors.prior_fetch(job_id)


@shared_task(name="workers.tasks.delivery_attempt", acks_late=True)
def delivery_attempt(delivery_id: int) -> None:
    writeback.delivery_attempt(delivery_id)


@shared_task(name="workers.tasks.webhook_deliver", acks_late=True)
def webhook_deliver(delivery_id: int) -> None:
    webhooks.webhook_deliver(delivery_id)


@shared_task(name="workers.tasks.pipeline_sweep", acks_late=True, expires=30)
def pipeline_sweep() -> None:
    sweep.pipeline_sweep()


@shared_task(name="workers.tasks.keys_rotate", acks_late=True, expires=120)
def keys_rotate() -> None:
    """From beat: re-encrypt under new keys in steps; while work is left, the next step follows
    at once rather than at the next beat."""
    if not key_rotation.keys_rotate():
        keys_rotate.apply_async(expires=120)


@shared_task(name="workers.tasks.messages_process", **RETRY)
def messages_process(message_ids: list[int]) -> None:
    messages.messages_process(up_to=max(message_ids))


@shared_task(name="workers.tasks.message_app_ack", acks_late=True)
def message_app_ack(message_id: int) -> None:
    acks.app_ack_send(message_id)
