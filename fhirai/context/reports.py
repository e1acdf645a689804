"""Clinical reports (ORU^R01 from the RIS/EHR) on their way to the NLP stage: the whole message is
de-identified by the site profile (fhirai.deid.hl7v2: field rules, free text through Presidio with
the message's own identifiers) into the `deid` blob area, its pseudonyms into the vault. Runs as
its own task after the message is processed, so Presidio never holds up message order. Once the
de-identified text is stored, the enabled NLP models for the message type get a job each."""

from __future__ import annotations

import base64
import html
import json
import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fhirai import blobs
from fhirai.audit.timeline import Event, record
from fhirai.celery import TASK_REPORT_DEIDENTIFY, dispatch_on_commit
from fhirai.context.models import ClinicalReport
from fhirai.context.records import fhir_subject_patient
from fhirai.deid.fhir import resource_deidentify
from fhirai.deid.hl7v2 import message_deidentify
from fhirai.deid.profile import profile_current
from fhirai.deid.text import Known
from fhirai.deid.vault import vault_put
from fhirai.results.models import FhirResource
from fhirai.results.resources import system
from fhirai.results.store import resource_version_content
from fhirai.routing.jobs import report_route


def clinical_report_deidentify(report_id: int) -> str:
    """De-identify the report's message or resource once; returns the deid blob key."""
    report = (
        ClinicalReport.objects.select_related("message", "resource", "patient").filter(pk=report_id).first()
    )
    if report is None:
        return ""
    if report.deid_blob_key:
        return report.deid_blob_key
    if report.message_id is None:
        return _resource_report_deidentify(report)
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


def _resource_report_deidentify(report: ClinicalReport) -> str:
    """A FHIR DiagnosticReport by the FHIR element rules (fhirai.deid.fhir), its free text through
    Presidio with the identifiers of the patient record it is about as well as its own. Its
    pseudonyms are keyed hashes (no vault entry needed: the trusted side recomputes them)."""
    content = resource_version_content(report.resource, report.resource_version)
    patient = report.patient
    known = (
        Known(
            names=(f"{patient.family}^{patient.given}",),
            identifiers=(patient.mrn,),
            dates=(patient.birth_date,) if patient.birth_date else (),
        )
        if patient
        else Known()
    )
    profile = profile_current()
    deid = resource_deidentify(content, profile, known=known)
    key = blobs.put(json.dumps(deid, sort_keys=True).encode("utf-8"), area="deid")
    with transaction.atomic():
        moved = ClinicalReport.objects.filter(pk=report.pk, deid_blob_key="").update(deid_blob_key=key)
        record(*report.timeline(), Event.DEIDENTIFIED, detail=f"report text: {profile.label}")
        if moved:
            report_route(report.pk)
    return key


def fhir_report_received(row: FhirResource) -> ClinicalReport | None:
    """A DiagnosticReport an EHR wrote or notified: its text goes to the NLP stage like an ORU's
    (one clinical report per version; fhirai's own AI reports are not read back)."""
    content = row.content
    tags = {t.get("code") for t in content.get("meta", {}).get("tag", [])}
    if "AIAST" in tags or any(i.get("system") == system("report") for i in content.get("identifier", [])):
        return None
    text = report_text_from_fhir(content)
    if not text.strip():
        return None
    accession = next(
        (
            str(i["value"])
            for i in content.get("identifier", [])
            if i.get("value") and "ACSN" in {c.get("code") for c in i.get("type", {}).get("coding", [])}
        ),
        "",
    )
    report, created = ClinicalReport.objects.get_or_create(
        resource=row,
        resource_version=row.version_id,
        defaults={
            "accession": accession[:64],
            "status": str(content.get("status", ""))[:8],
            "text": text,
            "patient": fhir_subject_patient(content),
            "received_at": timezone.now(),
        },
    )
    if created:
        record(*report.timeline(), Event.RECEIVED, detail=f"DiagnosticReport/{row.rid} v{row.version_id}")
        reports_deidentify_dispatch(report.pk)
    return report


def report_text_from_fhir(content: dict[str, Any]) -> str:
    """A DiagnosticReport's narrative: its text/* presentedForm attachments, else its narrative
    (XHTML to text), then its conclusion when not already part of them."""
    parts: list[str] = []
    for form in content.get("presentedForm", []):
        if str(form.get("contentType", "")).startswith("text/") and form.get("data"):
            try:
                parts.append(base64.b64decode(form["data"]).decode("utf-8", errors="replace"))
            except (ValueError, TypeError):
                continue
    if not parts and content.get("text", {}).get("div"):
        div = re.sub(r"<(br|/p|/div|/li|/tr)[^>]*>", "\n", str(content["text"]["div"]), flags=re.I)
        parts.append(html.unescape(re.sub(r"<[^>]+>", "", div)).strip())
    conclusion = str(content.get("conclusion", "")).strip()
    if conclusion and not any(conclusion in p for p in parts):
        parts.append(conclusion)
    return "\n\n".join(p.strip() for p in parts if p.strip())


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
