"""More of the REST API: FHIR-sourced clinical reports (the worklist's third kind), input refused
at the door, and the allowed senders. Registered on the same NinjaAPI as fhirai.api.views."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Path, Status
from ninja.errors import HttpError

from fhirai.api import schemas as s
from fhirai.api.access import access_record
from fhirai.api.auth import PHI_ROLES
from fhirai.api.views import (
    ERRORS,
    MAX_ID,
    Limit,
    Offset,
    _caller,
    _delivery_out,
    _page,
    _timeline,
    api,
    job_out,
    nul_free,
    paged,
)
from fhirai.context.consent import optout_set
from fhirai.context.models import ClinicalReport, OptOut
from fhirai.deid.profile import patient_pseudonym
from fhirai.ingest.models import Rejection, SourceRule
from fhirai.ingest.sources import DICOM_AE, MLLP_NETWORK, InvalidSource, source_rule_add, source_rule_remove
from fhirai.ops.retry import report_retry
from fhirai.ops.worklist import report_state
from fhirai.results.models import Delivery
from fhirai.routing.models import InferenceJob
from fhirai.webhooks.models import WebhookSubscription


def _report_out(r: ClinicalReport) -> dict[str, Any]:
    return {
        "id": r.pk,
        "resource": f"DiagnosticReport/{r.resource.rid}",
        "resource_version": r.resource_version,
        "status": r.status,
        "state": report_state(r),
        "deidentified": bool(r.deid_blob_key),
        "received_at": r.received_at,
        "patient_pseudonym": patient_pseudonym(r.patient.mrn, "") if r.patient else "",
    }


@api.get("/reports", response={200: s.ReportPage, **ERRORS}, tags=["reports"])
def reports_list(request: HttpRequest, limit: int = Limit, offset: int = Offset) -> dict[str, Any]:
    """Clinical reports received as FHIR DiagnosticReports (one per resource version), newest
    first; those that came in HL7 are under /messages."""
    _caller(request)
    limit, offset = _page(limit, offset)
    qs = (
        ClinicalReport.objects.filter(resource__isnull=False)
        .select_related("resource", "patient")
        .prefetch_related("jobs", "deliveries")
        .order_by("-received_at", "-id")
    )
    return paged(qs, limit, offset, _report_out)


@api.get(
    "/reports/{report_id}", response={200: s.ReportDetailOut, 404: s.ErrorOut, **ERRORS}, tags=["reports"]
)
def report_detail(request: HttpRequest, report_id: int = Path(..., ge=1, le=MAX_ID)) -> dict[str, Any]:
    """One FHIR-sourced clinical report: its timeline, NLP jobs and deliveries."""
    _caller(request)
    report = get_object_or_404(
        ClinicalReport.objects.filter(resource__isnull=False).select_related("resource", "patient"),
        pk=report_id,
    )
    out = _report_out(report)
    out["timeline"] = _timeline(*report.timeline())
    out["jobs"] = [
        job_out(j)
        for j in InferenceJob.objects.filter(clinical_report=report).select_related("model").order_by("id")
    ]
    out["deliveries"] = [
        _delivery_out(d)
        for d in Delivery.objects.filter(clinical_report=report).select_related("report").order_by("id")
    ]
    return out


@api.post(
    "/reports/{report_id}/retry",
    response={200: s.RetryOut, 404: s.ErrorOut, 409: s.ErrorOut, **ERRORS},
    tags=["reports"],
)
def report_retry_view(request: HttpRequest, report_id: int = Path(..., ge=1, le=MAX_ID)) -> dict[str, Any]:
    """Queue a report's failed NLP jobs or deliveries again (409 when nothing failed)."""
    principal = _caller(request, *PHI_ROLES)
    detail = report_retry(report_id, actor=principal.name)
    access_record(principal, "report.retry", kind="report", ids=[report_id])
    return {"item": f"report/{report_id}", "kind": "report", "detail": detail}


@api.get("/rejections", response={200: s.RejectionPage, **ERRORS}, tags=["rejections"])
def rejections_list(
    request: HttpRequest,
    protocol: str | None = None,
    code: str | None = None,
    limit: int = Limit,
    offset: int = Offset,
) -> dict[str, Any]:
    """Input refused at the door (kept for inspection), newest first; details name attributes,
    never their values."""
    _caller(request)
    limit, offset = _page(limit, offset)
    qs = Rejection.objects.order_by("-received_at", "-id")
    if protocol:
        qs = qs.filter(protocol=protocol)
    if code:
        qs = qs.filter(code=code)
    qs = nul_free(qs, protocol, code)
    return paged(qs, limit, offset, _rejection_out)


def _rejection_out(r: Rejection) -> dict[str, Any]:
    return {
        "id": r.pk,
        "protocol": r.protocol,
        "peer": r.peer,
        "code": r.code,
        "detail": r.detail,
        "kept": bool(r.blob_key),
        "received_at": r.received_at,
    }


def _rule_out(r: SourceRule) -> dict[str, Any]:
    return {"id": r.pk, "kind": r.kind, "value": r.value, "note": r.note, "created_by": r.created_by}


@api.get("/sources", response={200: list[s.SourceRuleOut], **ERRORS}, tags=["configuration"])
def sources_list(request: HttpRequest) -> list[dict[str, Any]]:
    """Senders allowed in from the console (the settings' lists are in the README's settings)."""
    _caller(request, *PHI_ROLES)
    return [_rule_out(r) for r in SourceRule.objects.all()]


def _source_add(request: HttpRequest, kind: str, value: str, note: str) -> Any:
    principal = _caller(request, *PHI_ROLES)
    try:
        row = source_rule_add(kind, value, note=note, actor=principal.name)
    except InvalidSource as exc:
        raise HttpError(400, str(exc)) from None
    access_record(principal, "config.source", kind="config", detail=f"{row} added")
    return Status(201, _rule_out(row))


@api.post(
    "/sources/dicom-ae", response={201: s.SourceRuleOut, 400: s.ErrorOut, **ERRORS}, tags=["configuration"]
)
def sources_add_ae(request: HttpRequest, body: s.DicomSourceIn) -> Any:
    """Allow a DICOM calling AE title (the SCP applies it within seconds, no restart)."""
    return _source_add(request, DICOM_AE, body.value, body.note)


@api.post(
    "/sources/mllp-network",
    response={201: s.SourceRuleOut, 400: s.ErrorOut, **ERRORS},
    tags=["configuration"],
)
def sources_add_network(request: HttpRequest, body: s.MllpSourceIn) -> Any:
    """Allow an MLLP sender's address or network (the listener applies it within seconds)."""
    return _source_add(request, MLLP_NETWORK, body.value, body.note)


@api.delete("/sources/{rule_id}", response={204: None, 404: s.ErrorOut, **ERRORS}, tags=["configuration"])
def sources_remove(request: HttpRequest, rule_id: int = Path(..., ge=1, le=MAX_ID)) -> Any:
    principal = _caller(request, *PHI_ROLES)
    row = source_rule_remove(rule_id)
    if row is None:
        raise HttpError(404, f"no source rule {rule_id}")
    access_record(principal, "config.source", kind="config", detail=f"{row} removed")
    return Status(204, None)


# --- patients' opt-outs --------------------------------------------------------------------------
def _optout_out(row: OptOut) -> dict[str, Any]:
    return {
        "id": row.pk,
        "mrn": row.mrn,
        "mrn_system": row.mrn_system,
        "source": row.source,
        "active": row.active,
        "reference": row.reference,
        "note": row.note,
        "updated_at": row.updated_at,
    }


@api.get("/optouts", response={200: list[s.OptOutOut], **ERRORS}, tags=["configuration"])
def optouts_list(request: HttpRequest) -> list[dict[str, Any]]:
    """Patients who opted out of AI processing, from every source (identified: admin, operator)."""
    principal = _caller(request, *PHI_ROLES)
    rows = list(OptOut.objects.order_by("-updated_at")[:1000])
    access_record(principal, "optout.list", kind="optout", ids=[r.pk for r in rows], detail="API")
    return [_optout_out(r) for r in rows]


@api.put("/optouts", response={200: s.OptOutOut, 400: s.ErrorOut, **ERRORS}, tags=["configuration"])
def optout_put(request: HttpRequest, body: s.OptOutIn) -> Any:
    """Put a patient on the site's opt-out list (or, with `active` false, take them off it): their
    studies and reports received from now on go to no model, visibly ("skipped: opt-out")."""
    principal = _caller(request, *PHI_ROLES)
    row = optout_set(
        body.mrn,
        authority=body.authority,
        source="site",
        active=body.active,
        reference=principal.name,
        note=body.note,
    )
    access_record(
        principal, "config.optout", kind="optout", ids=[row.pk], detail="set" if body.active else "lifted"
    )
    return _optout_out(row)


# --- webhook subscriptions -----------------------------------------------------------------------
def _subscription_out(sub: WebhookSubscription) -> dict[str, Any]:
    return {
        "id": sub.pk,
        "name": sub.name,
        "url": sub.url,
        "events": list(sub.events or []),
        "filter": dict(sub.filter or {}),
        "include_phi": sub.include_phi,
        "enabled": sub.enabled,
        "secret": sub.secret,
    }


@api.get("/webhooks/subscriptions", response={200: list[s.SubscriptionOut], **ERRORS}, tags=["webhooks"])
def subscriptions_list(request: HttpRequest) -> list[dict[str, Any]]:
    """Webhook subscriptions with their signing secrets (admin and operator)."""
    _caller(request, *PHI_ROLES)
    return [_subscription_out(sub) for sub in WebhookSubscription.objects.order_by("name")]


@api.put(
    "/webhooks/subscriptions/{name}",
    response={200: s.SubscriptionOut, 201: s.SubscriptionOut, 400: s.ErrorOut, **ERRORS},
    tags=["webhooks"],
)
def subscription_put(
    request: HttpRequest, body: s.SubscriptionIn, name: str = Path(..., pattern=s.SUBSCRIPTION_NAME)
) -> Any:
    """Create or replace the subscription `name` (checked as the console checks it); a new one gets
    a fresh signing secret, returned here."""
    principal = _caller(request, *PHI_ROLES)
    sub = WebhookSubscription.objects.filter(name=name).first()
    created = sub is None
    sub = sub or WebhookSubscription(name=name)
    sub.url, sub.events = body.url, list(dict.fromkeys(body.events))
    sub.filter = {k: v for k, v in body.filter.model_dump().items() if v is not None}
    sub.include_phi, sub.enabled = body.include_phi, body.enabled
    try:
        sub.full_clean()
    except ValidationError as exc:
        raise HttpError(400, "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
    sub.save()
    access_record(principal, "config.webhook", kind="config", ids=[sub.pk], detail=f"{sub.name} saved")
    return Status(201 if created else 200, _subscription_out(sub))


@api.delete(
    "/webhooks/subscriptions/{name}",
    response={204: None, 404: s.ErrorOut, **ERRORS},
    tags=["webhooks"],
)
def subscription_delete(request: HttpRequest, name: str = Path(..., pattern=s.SUBSCRIPTION_NAME)) -> Any:
    """Remove a subscription and its outbox (deliveries not yet sent are dropped)."""
    principal = _caller(request, *PHI_ROLES)
    sub = WebhookSubscription.objects.filter(name=name).first()
    if sub is None:
        raise HttpError(404, f"no webhook subscription {name}")
    sub.delete()
    access_record(principal, "config.webhook", kind="config", detail=f"{name} removed")
    return Status(204, None)
