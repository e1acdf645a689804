"""The REST API (django-ninja) at /api/: what the console does, for integration engines and
scripts. Authenticated by Bearer token or console session (fhirai.api.auth); viewers and auditors
see pseudonyms only, admins and operators also the identified fields, and each such view or
search is recorded as an AccessEvent. Errors are JSON: {"detail": "..."}."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from django.db import DataError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, NinjaAPI, Path, Query, Schema, Status
from ninja.errors import HttpError
from ninja.openapi.docs import Swagger
from ninja.security import HttpBearer
from ninja.utils import check_csrf
from pydantic import AfterValidator, BeforeValidator

from fhirai.api import schemas as s
from fhirai.api.access import access_record
from fhirai.api.auth import PHI_ROLES, Principal, principal_of
from fhirai.api.health import health_check
from fhirai.api.models import AccessEvent, Role
from fhirai.audit.timeline import events_for
from fhirai.deid.profile import accession_pseudonym, patient_pseudonym
from fhirai.deid.pseudonym import uid_remap
from fhirai.errors import NotFound
from fhirai.ingest.models import Message, Study
from fhirai.ops.retry import (
    NotRetryable,
    delivery_retry,
    message_replay,
    message_retry,
    study_replay,
    study_retry,
)
from fhirai.ops.worklist import ItemFilter, studies_filter
from fhirai.results import destinations as dest
from fhirai.results.models import Delivery, FhirResource
from fhirai.results.writeback import delivery_summary
from fhirai.routing.manifest import ManifestError, accepts_clean
from fhirai.routing.models import ModelRecord, PriorFetch
from fhirai.routing.priors import model_priors
from fhirai.webhooks.outbox import webhook_replay, webhooks_dead

MAX_LIMIT = 500


class ApiAuth(HttpBearer):
    """Bearer token, or the console's session (unsafe methods then need the CSRF token)."""

    def __call__(self, request: HttpRequest) -> Principal | None:
        principal = principal_of(request)
        if principal is not None and principal.via == "session" and request.method not in ("GET", "HEAD"):
            if check_csrf(request) is not None:
                raise HttpError(403, "CSRF check failed (send X-CSRFToken with a session)")
        return principal

    def authenticate(self, request: HttpRequest, token: str) -> Principal | None:
        return principal_of(request)


api = NinjaAPI(
    title="fhirai",
    version="1",
    description="Items, timelines, retries, deliveries and models of a fhirai installation.",
    urls_namespace="api",
    openapi_url="/schema",
    docs_url="/docs",
    # Local Swagger UI assets from the ninja package ("ninja" is in INSTALLED_APPS); no validator
    # badge, which would call validator.swagger.io.
    docs=Swagger(settings={"validatorUrl": None}),
    auth=ApiAuth(),
)


@api.exception_handler(NotRetryable)
def _not_retryable(request: HttpRequest, exc: NotRetryable) -> Any:
    return api.create_response(request, {"detail": str(exc)}, status=409)


@api.exception_handler(DataError)
def _data_error(request: HttpRequest, exc: DataError) -> Any:
    # A filter value the database cannot hold (a NUL byte, a number out of range): the client's fault.
    return api.create_response(
        request, {"detail": "a parameter value is out of range for the database"}, status=422
    )


@api.exception_handler(NotFound)
def _not_found(request: HttpRequest, exc: NotFound) -> Any:
    return api.create_response(request, {"detail": str(exc)}, status=404)


def _caller(request: HttpRequest, *roles: str) -> Principal:
    """The authenticated caller, 403 unless it has one of `roles` (any role when none given)."""
    principal: Principal = request.auth  # type: ignore[attr-defined]
    if roles and principal.role not in roles:
        raise HttpError(403, f"role {principal.role} may not do this (needs {' or '.join(roles)})")
    return principal


ERRORS = {401: s.ErrorOut, 403: s.ErrorOut, 422: s.ValidationErrorOut}


# --- health ----------------------------------------------------------------------------------------
@api.get("/health", auth=None, response={200: s.HealthOut, 503: s.HealthOut}, tags=["health"])
def health(request: HttpRequest) -> Status:
    """Database and broker reachability, and the queue depths where the broker tells them."""
    result = health_check()
    return Status(200 if result["status"] == "ok" else 503, result)


# --- studies ---------------------------------------------------------------------------------------
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: object) -> object:
    """The schema promises date-time (RFC 3339); pydantic alone would also take '0.5' or a date."""
    if isinstance(value, str) and not RFC3339.fullmatch(value):
        raise ValueError("expected an RFC 3339 date-time, e.g. 2026-01-31T08:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    """In UTC: RFC 3339 allows offsets up to 23:59, PostgreSQL only to 15:59."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date-time out of range") from None


DateTime = Annotated[datetime, BeforeValidator(_rfc3339), AfterValidator(_utc)]
MAX_OFFSET = 10**9
MAX_ID = 2**63 - 1  # bigint: a larger id is a 422, not a database error
Limit = Query(50, ge=1, le=MAX_LIMIT)
Offset = Query(0, ge=0, le=MAX_OFFSET)


class StudyFilter(Schema):
    state: str | None = None
    modality: str | None = None
    model: str | None = None
    received_from: DateTime | None = None
    received_to: DateTime | None = None
    patient: str | None = None  # the patient's pseudonym
    mrn: str | None = None  # identified searches: admin and operator only, audited
    name: str | None = None
    accession: str | None = None
    limit: int = Field(50, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


def nul_free(qs: QuerySet[Any], *values: object) -> QuerySet[Any]:
    """A filter value with a NUL character matches nothing (PostgreSQL text cannot hold one), so
    the answer is an empty page, not a database error."""
    if any(isinstance(v, str) and "\x00" in v for v in values):
        return qs.none()
    return qs


def paged(qs: QuerySet[Any], limit: int, offset: int, out: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """One page of `qs` as every list answers it: count, limit, offset, items."""
    return {
        "count": qs.count(),
        "limit": limit,
        "offset": offset,
        "items": [out(r) for r in qs[offset : offset + limit]],
    }


def job_prior(j: Any) -> str | None:
    """Where the job's prior study stands ("ready: prior study 12 from pacs, 370 days earlier: 24
    instance(s)"), None for a model that reads none. No identifiers, no dates."""
    fetch = PriorFetch.objects.filter(job_id=j.pk).first()
    return f"{fetch.state}: {fetch.detail}".rstrip(": ") if fetch is not None else None


def job_out(j: Any) -> dict[str, Any]:
    return {
        "id": j.pk,
        "model": str(j.model),
        "revision": j.revision,
        "state": j.state,
        "attempts": j.attempts,
        "dispatched_at": j.dispatched_at,
        "finished_at": j.finished_at,
        "error": j.error,
        "prior": job_prior(j),
    }


def _page(limit: int, offset: int) -> tuple[int, int]:
    if not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
        raise HttpError(422, f"limit must be 1 to {MAX_LIMIT} and offset at least 0")
    return limit, offset


def _study_out(study: Study, principal: Principal) -> dict[str, Any]:
    out = {
        "id": study.pk,
        "state": study.state,
        "state_changed_at": study.state_changed_at,
        "revision": study.revision,
        "error": study.error,
        "modalities": study.modalities,
        "body_part": study.body_part,
        "calling_ae": study.calling_ae,
        "instance_count": study.instance_count,
        "first_received_at": study.first_received_at,
        "last_received_at": study.last_received_at,
        "patient_pseudonym": patient_pseudonym(study.patient_id, study.issuer_of_patient_id),
        "accession_pseudonym": accession_pseudonym(study.accession_number) if study.accession_number else "",
        "study_uid_pseudonym": uid_remap(study.study_uid),
        "models": sorted({str(j.model) for j in study.jobs.all()}),
        "phi": None,
    }
    if principal.sees_phi:
        out["phi"] = {
            "patient_name": study.patient_name,
            "patient_id": study.patient_id,
            "issuer_of_patient_id": study.issuer_of_patient_id,
            "patient_birth_date": study.patient_birth_date,
            "accession_number": study.accession_number,
            "study_uid": study.study_uid,
            "study_date": study.study_date,
            "study_description": study.study_description,
        }
    return out


def _studies_filtered(f: StudyFilter, principal: Principal) -> QuerySet[Study]:
    if any(isinstance(v, str) and "\x00" in v for v in f.model_dump().values()):
        return Study.objects.none()  # matches nothing; and no vault lookup of such a pseudonym
    qs = studies_filter(
        ItemFilter(
            state=f.state or "",
            model=f.model or "",
            received_from=f.received_from,
            received_to=f.received_to,
            patient=f.patient or "",
            mrn=f.mrn or "",
            name=f.name or "",
            accession=f.accession or "",
        ),
        actor=principal.name,
    )
    return qs.filter(modalities__icontains=f.modality) if f.modality else qs


@api.get("/studies", response={200: s.StudyPage, **ERRORS}, tags=["studies"])
def studies_list(request: HttpRequest, filters: Query[StudyFilter]) -> dict[str, Any]:
    """Studies, newest first; identified fields (`phi`) and searches by MRN, name or accession
    number only for admin and operator, and audited."""
    principal = _caller(request)
    searched = [k for k in ("mrn", "name", "accession") if getattr(filters, k)]
    if searched and not principal.sees_phi:
        raise HttpError(403, f"role {principal.role} may not search by {', '.join(searched)}")
    limit, offset = _page(filters.limit, filters.offset)
    qs = _studies_filtered(filters, principal)
    rows = list(qs.prefetch_related("jobs__model")[offset : offset + limit])
    if principal.sees_phi:
        access_record(
            principal,
            "study.search" if searched else "study.list",
            kind="study",
            ids=[r.pk for r in rows],
            detail=f"searched by {', '.join(searched)}" if searched else "",
        )
    return {
        "count": qs.count(),
        "limit": limit,
        "offset": offset,
        "items": [_study_out(r, principal) for r in rows],
    }


def _delivery_out(d: Delivery) -> dict[str, Any]:
    summary = delivery_summary(d)  # the status and OperationOutcome codes; the body may echo PHI
    return {
        "id": d.pk,
        "report": f"DiagnosticReport/{d.report.rid}",
        "report_version": d.report_version,
        "destination": d.destination,
        "state": d.state,
        "attempts": d.attempts,
        "created_at": d.created_at,
        "next_attempt_at": d.next_attempt_at,
        "delivered_at": d.delivered_at,
        "last_status": d.last_status,
        "last_response_summary": summary,
        "study_id": d.study_id,
        "clinical_report_id": d.clinical_report_id,
    }


def _timeline(kind: str, item_id: int) -> list[dict[str, Any]]:
    return [
        {"event": e.event, "at": e.at, "detail": e.detail, "error": e.error}
        for e in events_for(kind, item_id)
    ]


@api.get("/studies/{study_id}", response={200: s.StudyDetailOut, 404: s.ErrorOut, **ERRORS}, tags=["studies"])
def study_detail(request: HttpRequest, study_id: int = Path(..., ge=1, le=MAX_ID)) -> dict[str, Any]:
    """One study: state, timeline, inference jobs, its reports and their deliveries."""
    principal = _caller(request)
    study = get_object_or_404(Study.objects.prefetch_related("jobs__model"), pk=study_id)
    out = _study_out(study, principal)
    out["timeline"] = _timeline("study", study.pk)
    out["jobs"] = [job_out(j) for j in sorted(study.jobs.all(), key=lambda j: j.pk)]
    out["reports"] = [
        f"DiagnosticReport/{rid}"
        for rid in FhirResource.objects.filter(study=study, resource_type="DiagnosticReport")
        .order_by("id")
        .values_list("rid", flat=True)
    ]
    out["deliveries"] = [
        _delivery_out(d) for d in Delivery.objects.filter(study=study).select_related("report").order_by("id")
    ]
    if principal.sees_phi:
        access_record(principal, "study.view", kind="study", ids=[study.pk])
    return out


@api.post(
    "/studies/{study_id}/retry",
    response={200: s.RetryOut, 404: s.ErrorOut, 409: s.ErrorOut, **ERRORS},
    tags=["studies"],
)
def study_retry_view(request: HttpRequest, study_id: int = Path(..., ge=1, le=MAX_ID)) -> dict[str, Any]:
    """Restart a failed study from the stage it failed at (409 when it has not failed)."""
    principal = _caller(request, *PHI_ROLES)
    kind, detail = study_retry(study_id, actor=principal.name)
    access_record(principal, "study.retry", kind="study", ids=[study_id], detail=kind)
    return {"item": f"study/{study_id}", "kind": kind, "detail": detail}


@api.post(
    "/studies/{study_id}/replay",
    response={200: s.RetryOut, 404: s.ErrorOut, 409: s.ErrorOut, **ERRORS},
    tags=["studies"],
)
def study_replay_view(request: HttpRequest, study_id: int = Path(..., ge=1, le=MAX_ID)) -> dict[str, Any]:
    """Run a finished study through the pipeline again as a new revision (409 while in progress)."""
    principal = _caller(request, *PHI_ROLES)
    detail = study_replay(study_id, actor=principal.name)
    access_record(principal, "study.replay", kind="study", ids=[study_id])
    return {"item": f"study/{study_id}", "kind": "replay", "detail": detail}


# --- HL7 messages ----------------------------------------------------------------------------------
def _message_out(m: Message) -> dict[str, Any]:
    return {
        "id": m.pk,
        "message_type": m.message_type,
        "control_id": m.control_id,
        "sender": m.sender,
        "version": m.version,
        "state": m.state,
        "enhanced": m.enhanced,
        "app_ack": m.app_ack,
        "app_ack_state": m.app_ack_state,
        "app_ack_code": m.app_ack_code,
        "error": m.error,
        "received_at": m.received_at,
        "processed_at": m.processed_at,
    }


MESSAGE_FIELDS = (
    "id message_type control_id sender version state enhanced app_ack app_ack_state app_ack_code "
    "error received_at processed_at"
).split()


@api.get("/messages", response={200: s.MessagePage, **ERRORS}, tags=["messages"])
def messages_list(
    request: HttpRequest,
    state: str | None = None,
    message_type: str | None = None,
    sender: str | None = None,
    limit: int = Limit,
    offset: int = Offset,
) -> dict[str, Any]:
    """HL7 v2 messages as received, newest first (no message content here)."""
    _caller(request)
    limit, offset = _page(limit, offset)
    qs = Message.objects.only(*MESSAGE_FIELDS).order_by("-received_at", "-id")
    if state:
        qs = qs.filter(state=state)
    if message_type:
        qs = qs.filter(message_type=message_type)
    if sender:
        qs = qs.filter(sender=sender)
    qs = nul_free(qs, state, message_type, sender)
    return paged(qs, limit, offset, _message_out)


@api.get(
    "/messages/{message_id}", response={200: s.MessageDetailOut, 404: s.ErrorOut, **ERRORS}, tags=["messages"]
)
def message_detail(request: HttpRequest, message_id: int = Path(..., ge=1, le=MAX_ID)) -> dict[str, Any]:
    """One message with its timeline; the raw text only for admin and operator (audited)."""
    principal = _caller(request)
    message = get_object_or_404(Message, pk=message_id)
    out = _message_out(message)
    out["timeline"] = _timeline("message", message.pk)
    if principal.sees_phi:
        out["raw"] = bytes(message.raw).decode(message.codec or "utf-8", errors="replace")
        access_record(principal, "message.view", kind="message", ids=[message.pk], detail="raw text")
    return out


@api.post(
    "/messages/{message_id}/retry",
    response={200: s.RetryOut, 404: s.ErrorOut, 409: s.ErrorOut, **ERRORS},
    tags=["messages"],
)
def message_retry_view(request: HttpRequest, message_id: int = Path(..., ge=1, le=MAX_ID)) -> dict[str, Any]:
    """Apply a failed message again (409 when it has not failed)."""
    principal = _caller(request, *PHI_ROLES)
    detail = message_retry(message_id, actor=principal.name)
    access_record(principal, "message.retry", kind="message", ids=[message_id])
    return {"item": f"message/{message_id}", "kind": "message", "detail": detail}


@api.post(
    "/messages/{message_id}/replay",
    response={200: s.RetryOut, 404: s.ErrorOut, 409: s.ErrorOut, **ERRORS},
    tags=["messages"],
)
def message_replay_view(request: HttpRequest, message_id: int = Path(..., ge=1, le=MAX_ID)) -> dict[str, Any]:
    """Apply a processed or failed message again, as received (409 while it waits to be applied)."""
    principal = _caller(request, *PHI_ROLES)
    detail = message_replay(message_id, actor=principal.name)
    access_record(principal, "message.replay", kind="message", ids=[message_id])
    return {"item": f"message/{message_id}", "kind": "replay", "detail": detail}


# --- deliveries ------------------------------------------------------------------------------------
@api.get("/deliveries", response={200: s.DeliveryPage, **ERRORS}, tags=["deliveries"])
def deliveries_list(
    request: HttpRequest,
    state: str | None = None,
    destination: str | None = None,
    limit: int = Limit,
    offset: int = Offset,
) -> dict[str, Any]:
    """Write-back deliveries (the outbox), newest first; `state=failed` for the ones to fix."""
    _caller(request)
    limit, offset = _page(limit, offset)
    qs = Delivery.objects.select_related("report").order_by("-created_at", "-id")
    if state:
        qs = qs.filter(state=state)
    if destination:
        qs = qs.filter(destination=destination)
    qs = nul_free(qs, state, destination)
    return paged(qs, limit, offset, _delivery_out)


@api.post(
    "/deliveries/{delivery_id}/retry",
    response={200: s.RetryOut, 404: s.ErrorOut, 409: s.ErrorOut, **ERRORS},
    tags=["deliveries"],
)
def delivery_retry_view(
    request: HttpRequest, delivery_id: int = Path(..., ge=1, le=MAX_ID)
) -> dict[str, Any]:
    """Send a failed delivery again now (409 when it has not failed)."""
    principal = _caller(request, *PHI_ROLES)
    detail = delivery_retry(delivery_id, actor=principal.name)
    access_record(principal, "delivery.retry", kind="delivery", ids=[delivery_id])
    return {"item": f"delivery/{delivery_id}", "kind": "write-back", "detail": detail}


# --- models ----------------------------------------------------------------------------------------
def _model_out(m: ModelRecord) -> dict[str, Any]:
    return {
        "id": m.pk,
        "name": m.name,
        "version": m.version,
        "title": m.title,
        "task": m.task,
        "format": m.format,
        "enabled": m.enabled,
        "accepts": m.accepts,
        "priors": model_priors(m),
    }


@api.get("/models", response={200: list[s.ModelOut], **ERRORS}, tags=["models"])
def models_list(request: HttpRequest) -> list[dict[str, Any]]:
    """Registered models and what each accepts."""
    _caller(request)
    return [_model_out(m) for m in ModelRecord.objects.order_by("name", "version")]


@api.patch(
    "/models/{model_id}",
    response={200: s.ModelOut, 400: s.ErrorOut, 404: s.ErrorOut, 409: s.ErrorOut, **ERRORS},
    tags=["models"],
)
def model_update(request: HttpRequest, body: s.ModelPatch, model_id: int = Path(..., ge=1, le=MAX_ID)) -> Any:
    """Enable or disable a model, or change what it accepts (admin and operator). 409 when the
    routing does not fit the model's task (an NLP model is routed by message type only, an image
    model never by message type)."""
    principal = _caller(request, *PHI_ROLES)
    model = get_object_or_404(ModelRecord, pk=model_id)
    fields = []
    if body.accepts is not None:  # the keys sent replace those; the others stay
        try:
            sent = accepts_clean(model.task, body.accepts.model_dump(exclude_unset=True))
        except ManifestError as exc:
            raise HttpError(409, str(exc)) from None
        model.accepts = {**model.accepts, **sent}
        fields.append("accepts")
    if body.enabled is not None:
        model.enabled = body.enabled
        fields.append("enabled")
    if fields:
        model.save(update_fields=fields)
        access_record(principal, "model.update", kind="model", ids=[model.pk], detail=", ".join(fields))
    return _model_out(model)


# --- destinations and webhooks ---------------------------------------------------------------------
def _destination_out(d: dest.DestinationView) -> dict[str, Any]:
    return {"name": d.name, "kind": d.kind, "address": d.address, "enabled": d.enabled, "origin": d.origin}


@api.get("/destinations", response={200: list[s.DestinationOut], **ERRORS}, tags=["configuration"])
def destinations_list(request: HttpRequest) -> list[dict[str, Any]]:
    """Where reports are written: the settings' destinations and the console's changes."""
    _caller(request, *PHI_ROLES)
    return [_destination_out(d) for d in dest.destination_list()]


def _destination_set(request: HttpRequest, name: str, address: str, enabled: bool) -> dict[str, Any]:
    principal = _caller(request, *PHI_ROLES)
    try:
        view = dest.destination_save(name, address, enabled=enabled, actor=principal.name)
    except dest.InvalidDestination as exc:
        raise HttpError(400, str(exc)) from None
    access_record(principal, "config.destination", kind="config", detail=f"{view.name} saved")
    return _destination_out(view)


@api.put(
    "/destinations/fhir-upstream",
    response={200: s.DestinationOut, 400: s.ErrorOut, **ERRORS},
    tags=["configuration"],
)
def destination_fhir_put(request: HttpRequest, body: s.FhirDestinationIn) -> Any:
    """Set the upstream FHIR server's base URL and switch (its credentials stay in the settings)."""
    return _destination_set(request, dest.FHIR_UPSTREAM, body.url, body.enabled)


@api.put(
    "/destinations/mllp/{peer}",
    response={200: s.DestinationOut, 400: s.ErrorOut, **ERRORS},
    tags=["configuration"],
)
def destination_mllp_put(
    request: HttpRequest,
    body: s.MllpDestinationIn,
    peer: str = Path(..., pattern=s.PEER_PATTERN),
) -> Any:
    """Set (or add) an HL7 v2 peer that gets ORU^R01 results and application ACKs."""
    return _destination_set(request, f"{dest.MLLP_PREFIX}{peer}", f"{body.host}:{body.port}", body.enabled)


@api.put(
    "/destinations/dicom/{peer}",
    response={200: s.DestinationOut, 400: s.ErrorOut, **ERRORS},
    tags=["configuration"],
)
def destination_dicom_put(
    request: HttpRequest,
    body: s.DicomDestinationIn,
    peer: str = Path(..., pattern=s.PEER_PATTERN),
) -> Any:
    """Set (or add) a PACS that gets each result as DICOM SR in the original study by C-STORE."""
    return _destination_set(
        request, f"{dest.DICOM_PREFIX}{peer}", f"{body.aet}@{body.host}:{body.port}", body.enabled
    )


@api.get("/webhooks/dead", response={200: list[s.WebhookDeliveryOut], **ERRORS}, tags=["webhooks"])
def webhooks_dead_list(request: HttpRequest) -> Any:
    """The dead-letter list: webhook deliveries that failed every attempt, newest first."""
    _caller(request, *PHI_ROLES)
    return [
        {
            "id": d.pk,
            "subscription": d.subscription.name,
            "event_type": d.event_type,
            "message_id": d.message_id,
            "state": d.state,
            "attempts": d.attempts,
            "last_status": d.last_status,
            "created_at": d.created_at,
        }
        for d in webhooks_dead()
    ]


@api.post(
    "/webhooks/deliveries/{delivery_id}/replay",
    response={200: s.RetryOut, 404: s.ErrorOut, 409: s.ErrorOut, **ERRORS},
    tags=["webhooks"],
)
def webhook_replay_api(request: HttpRequest, delivery_id: int = Path(..., ge=1, le=MAX_ID)) -> Any:
    """Send a dead webhook delivery again under the same webhook-id (409 when it is not dead)."""
    principal = _caller(request, *PHI_ROLES)
    if not webhook_replay(delivery_id):
        raise NotRetryable(f"webhook delivery {delivery_id} is not in the dead-letter list")
    access_record(principal, "webhook.replay", kind="webhook", ids=[delivery_id])
    return {"item": f"webhook-delivery/{delivery_id}", "kind": "replay", "detail": "queued again"}


# --- access audit ----------------------------------------------------------------------------------
@api.get("/audit", response={200: list[s.AccessOut], **ERRORS}, tags=["audit"])
def audit_list(
    request: HttpRequest, actor: str | None = None, limit: int = Limit, offset: int = Offset
) -> Any:
    """Who viewed or searched identified data, or changed something, through the API (admin, auditor)."""
    _caller(request, Role.ADMIN, Role.AUDITOR)
    limit, offset = _page(limit, offset)
    qs = AccessEvent.objects.order_by("-at", "-id")
    if actor:
        qs = qs.filter(actor=actor)
    qs = nul_free(qs, actor)
    return list(qs[offset : offset + limit])


from fhirai.api import more_views  # noqa: E402,F401 - registers the reports, rejections and sources paths
