"""Clinical reports (ORU^R01 from the RIS/EHR) on their way to the NLP stage: the whole message is
de-identified by the site profile (fhirai.deid.hl7v2: field rules, free text through Presidio with
the message's own identifiers) into the `deid` blob area, its pseudonyms into the vault. Runs as
its own task after the message is processed, so Presidio never holds up message order. Once the
de-identified text is stored, the enabled NLP models for the message type get a job each."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fhirai import blobs
from fhirai.audit.timeline import Event, record
from fhirai.celery import TASK_REPORT_DEIDENTIFY, dispatch_on_commit
from fhirai.context.models import ClinicalReport
from fhirai.deid.hl7v2 import message_deidentify
from fhirai.deid.profile import profile_current
from fhirai.deid.vault import vault_put
from fhirai.routing.jobs import report_route


def clinical_report_deidentify(report_id: int) -> str:
    """De-identify the report's message once; returns the deid blob key."""
    report = ClinicalReport.objects.select_related("message").filter(pk=report_id).first()
    if report is None:
        return ""
    if report.deid_blob_key:
        return report.deid_blob_key
    message = report.message
    try:
        text = bytes(message.raw).decode(message.codec or "utf-8", errors="replace")
    except LookupError:
        text = bytes(message.raw).decode("utf-8", errors="replace")
    profile = profile_current()
    deid = message_deidentify(text, profile)
    key = blobs.put(deid.message.encode("utf-8"), area="deid")
    with transaction.atomic():
        for alias, original in deid.pseudonyms.items():
            vault_put("patient-id" if alias == deid.patient else "order", pseudonym=alias, original=original)
        moved = ClinicalReport.objects.filter(pk=report.pk, deid_blob_key="").update(deid_blob_key=key)
        record("message", message.pk, Event.DEIDENTIFIED, detail=f"report text: {profile.label}")
        if moved:
            report_route(report.pk)  # the NLP models that read this kind of report
    return key


def reports_deidentify_dispatch(report_id: int) -> None:
    dispatch_on_commit(TASK_REPORT_DEIDENTIFY, report_id)


def reports_redispatch_stalled() -> int:
    """Reports whose de-identification was lost (worker died, message lost): queue them again."""
    cutoff = timezone.now() - timedelta(seconds=settings.FHIRAI_STALL_SECONDS)
    ids = list(
        ClinicalReport.objects.filter(deid_blob_key="", received_at__lte=cutoff).values_list("pk", flat=True)[
            :100
        ]
    )
    for report_id in ids:
        with transaction.atomic():
            reports_deidentify_dispatch(report_id)
    return len(ids)
