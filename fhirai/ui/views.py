"""The operator's console: server-rendered pages behind Django's login, with the roles of
fhirai.api.auth (admin and operator see identified data and may retry, replay and configure;
viewer sees pseudonyms and de-identified views only; auditor reads the audit log). Every view or
search of identified data is recorded as an AccessEvent, as the REST API does.

Pages: dashboard, worklist (studies, HL7 messages, FHIR reports), item pages (timeline, raw and
de-identified side by side, preview, results, deliveries, retry and replay), configuration
(destinations, models, webhooks, sources, de-identification), webhooks (dead letters), audit."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, time, timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_date
from django.views.decorators.http import require_POST

from fhirai.api.access import access_record
from fhirai.api.auth import PHI_ROLES, Principal, principal_of
from fhirai.api.models import AccessEvent, Role
from fhirai.api.throttle import (
    Lockout,
    client_address,
    login_failed,
    login_lockout,
    login_refused,
    login_succeeded,
)
from fhirai.audit.timeline import events_for
from fhirai.context.models import ClinicalReport
from fhirai.deid.profile import accession_pseudonym, patient_pseudonym
from fhirai.deid.pseudonym import uid_remap
from fhirai.errors import FhiraiError, NotFound, Unavailable
from fhirai.ingest.models import Instance, Message, MessageState, SourceRule, Study, StudyState
from fhirai.ingest.sources import (
    RULES_TTL,
    InvalidSource,
    dicom_calling_allowed,
    mllp_networks,
    source_rule_add,
    source_rule_remove,
)
from fhirai.ops import retry as ops
from fhirai.ops.worklist import (
    ItemFilter,
    messages_filter,
    rejections_filter,
    report_state,
    reports_filter,
    studies_filter,
)
from fhirai.render import PreviewUnavailable, instance_preview_png, study_preview_instance
from fhirai.results import destinations as dest
from fhirai.results.models import Delivery, FhirResource
from fhirai.results.writeback import delivery_summary
from fhirai.routing.models import InferenceJob, ModelRecord
from fhirai.ui.forms import AcceptsForm, DestinationForm, ProfileForm, SubscriptionForm
from fhirai.webhooks.models import WebhookDelivery, WebhookSubscription
from fhirai.webhooks.outbox import webhook_replay, webhooks_dead

log = logging.getLogger(__name__)
PAGE_SIZE = 50
TEXT_LIMIT = 2000  # HL7 and FHIR values: report text is long, and the part that changed matters
DIFF_ROWS = 3000  # an enhanced multi-frame header has tens of thousands of elements
BULK_MAX = 1000
CONFIG_ROLES = PHI_ROLES
AUDIT_ROLES = (Role.ADMIN, Role.AUDITOR)


def healthz(request: HttpRequest) -> HttpResponse:
    """200 when the database answers; 503 otherwise (for load balancers and the run supervisor)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any database failure means unhealthy
        return JsonResponse({"status": "unavailable", "database": type(exc).__name__}, status=503)
    return JsonResponse({"status": "ok"})


# --- access --------------------------------------------------------------------------------------
class LoginView(auth_views.LoginView):
    """Django's login, throttled (fhirai.api.throttle): while a user name or client address is
    locked out, an attempt is answered 429 without its password being checked."""

    template_name = "console/login.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = request.POST.get("username", "")
        lockout = login_lockout(username=username, address=client_address(request))
        if lockout is not None:
            login_refused(username=username, address=client_address(request), lockout=lockout)
            return self._locked(lockout)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: Any) -> HttpResponse:
        login_succeeded(username=form.get_user().get_username())
        return super().form_valid(form)

    def form_invalid(self, form: Any) -> HttpResponse:
        username = self.request.POST.get("username", "")
        lockout = login_failed(username=username, address=client_address(self.request))
        if lockout is not None:
            return self._locked(lockout)
        return super().form_invalid(form)

    def _locked(self, lockout: Lockout) -> HttpResponse:
        minutes = max(1, -(-lockout.retry_after // 60))
        context = self.get_context_data(
            form=self.get_form_class()(self.request),
            locked=f"Too many failed logins. Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
        )
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(lockout.retry_after)
        return response


class LogoutView(auth_views.LogoutView):
    next_page = "/login/"


def console(*roles: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """A console page: logged in (else to the login page), with a role, and one of `roles` if given."""

    def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def inner(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect(f"{reverse('console:login')}?{urlencode({'next': request.get_full_path()})}")
            principal = principal_of(request)
            if principal is None:
                return _forbidden(request, None, "your account has no console role; ask an administrator")
            if roles and principal.role not in roles:
                return _forbidden(request, principal, f"the {principal.role} role may not open this page")
            request.principal = principal  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return inner

    return wrap


def _forbidden(request: HttpRequest, principal: Principal | None, why: str) -> HttpResponse:
    return render(request, "console/forbidden.html", {"principal": principal, "why": why}, status=403)


def _page(request: HttpRequest, template: str, nav: str, **context: Any) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    if len(context.get("diff") or []) > DIFF_ROWS:
        context["diff_more"] = len(context["diff"]) - DIFF_ROWS
        context["diff"] = context["diff"][:DIFF_ROWS]
    return render(
        request,
        template,
        {"principal": principal, "nav": nav, "sees_phi": principal.sees_phi, "may_act": principal.sees_phi}
        | context,
    )


def _may_act(request: HttpRequest) -> Principal:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    if principal.role not in PHI_ROLES:
        raise PermissionError(f"the {principal.role} role may not retry, replay or configure")
    return principal


@console()
def dashboard(request: HttpRequest) -> HttpResponse:
    from fhirai.ui.dashboard import dashboard_context

    return _page(request, "console/dashboard.html", "dashboard", **dashboard_context())


# --- worklist ------------------------------------------------------------------------------------
def _day(value: str, *, end: bool = False) -> datetime | None:
    day = parse_date(value or "") if value else None
    if day is None:
        return None
    moment = timezone.make_aware(datetime.combine(day, time.min))
    return moment + timedelta(days=1) if end else moment


def _filter_of(params: QueryDict, principal: Principal) -> ItemFilter:
    """The worklist's filter from its fields (the query string, or the bulk-retry form's copy)."""

    def value(key: str) -> str:
        return params.get(key, "").replace("\x00", "").strip()  # PostgreSQL text holds no NUL

    phi = principal.sees_phi
    return ItemFilter(
        state=value("state"),
        source=value("source"),
        model=value("model"),
        received_from=_day(value("from")),
        received_to=_day(value("to"), end=True),
        patient=value("patient"),
        mrn=value("mrn") if phi else "",
        name=value("name") if phi else "",
        accession=value("accession") if phi else "",
    )


def _items(kind: str, f: ItemFilter, principal: Principal) -> QuerySet[Any]:
    if kind == "rejection":
        return rejections_filter(f)
    if kind == "message":
        return messages_filter(f, actor=principal.name)
    if kind == "report":
        return reports_filter(f, actor=principal.name)
    return studies_filter(f, actor=principal.name).prefetch_related("jobs__model")


STATES = {
    "rejection": [],
    "study": [s.value for s in StudyState],
    "message": [s.value for s in MessageState],
    "report": ["pending", "queued", "done", "failed"],
}


@console()
def worklist(request: HttpRequest) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    kind = request.GET.get("kind", "study")
    if kind not in STATES:
        kind = "study"
    refused = [k for k in ("mrn", "name", "accession") if request.GET.get(k) and not principal.sees_phi]
    if refused:
        messages.error(request, f"the {principal.role} role may not search by {', '.join(refused)}")
    f = _filter_of(request.GET, principal)
    qs = _items(kind, f, principal)
    paginator = Paginator(qs, PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    rows = [_row(kind, item, principal) for item in page.object_list]
    if principal.sees_phi and rows and kind != "rejection":
        access_record(
            principal,
            f"{kind}.search" if f.phi_searched else f"{kind}.list",
            kind=kind,
            ids=[r["id"] for r in rows],
            detail=f"console; searched by {', '.join(f.phi_searched)}" if f.phi_searched else "console",
        )
    keep = {k: v for k, v in request.GET.items() if k != "page" and v}
    return _page(
        request,
        "console/worklist.html",
        "worklist",
        kind=kind,
        rows=rows,
        page=page,
        count=paginator.count,
        f=f,
        q=request.GET,
        states=STATES[kind],
        models=ModelRecord.objects.order_by("name").values_list("name", flat=True).distinct(),
        query=urlencode(keep),
    )


def _row(kind: str, item: Any, principal: Principal) -> dict[str, Any]:
    if kind == "rejection":
        return {
            "id": item.pk,
            "url": "",
            "state": item.code,
            "received_at": item.received_at,
            "source": item.peer,
            "what": item.protocol + (" (input kept)" if item.blob_key else ""),
            "error": item.detail,
            "models": "",
            "patient": "",
            "phi": "",
        }
    if kind == "message":
        return {
            "id": item.pk,
            "url": reverse("console:message", args=[item.pk]),
            "state": item.state,
            "received_at": item.received_at,
            "source": item.sender,
            "what": f"{item.message_type} {item.control_id}",
            "error": item.error,
            "models": "",
            "patient": "",
            "phi": "",
        }
    if kind == "report":
        patient = item.patient
        return {
            "id": item.pk,
            "url": reverse("console:report", args=[item.pk]),
            "state": report_state(item),
            "received_at": item.received_at,
            "source": "FHIR",
            "what": f"DiagnosticReport v{item.resource_version}",
            "error": "",
            "models": "",
            "patient": patient_pseudonym(patient.mrn, "") if patient else "",
            "phi": f"{patient.family}, {patient.given} ({patient.mrn})"
            if patient and principal.sees_phi
            else "",
        }
    return {
        "id": item.pk,
        "url": reverse("console:study", args=[item.pk]),
        "state": item.state,
        "received_at": item.first_received_at,
        "source": item.calling_ae,
        "what": f"{item.modalities or '?'} · {item.instance_count} instance(s)"
        + (" · prior, fetched for comparison" if item.role == "prior" else ""),
        "error": item.error,
        "models": ", ".join(sorted({j.model.name for j in item.jobs.all()})),
        "patient": patient_pseudonym(item.patient_id, item.issuer_of_patient_id),
        "phi": f"{_person_name(item.patient_name)} ({item.patient_id}) {item.accession_number}"
        if principal.sees_phi
        else "",
    }


# --- item pages ----------------------------------------------------------------------------------
def _timeline(kind: str, item_id: int) -> list[dict[str, Any]]:
    rows, previous = [], None
    for e in events_for(kind, item_id):
        rows.append(
            {
                "event": e.event,
                "at": e.at,
                "after": (e.at - previous).total_seconds() if previous else None,
                "detail": e.detail,
                "error": e.error,
            }
        )
        previous = e.at
    return rows


def _deliveries(qs: QuerySet[Delivery], principal: Principal) -> list[dict[str, Any]]:
    out = []
    for d in qs.select_related("report").prefetch_related("attempt_log").order_by("id"):
        out.append(
            {
                "d": d,
                "summary": delivery_summary(d),
                # The peer's full reply may echo patient data: identified roles only.
                "response": d.last_response if principal.sees_phi else "",
                "attempts": [
                    {
                        "a": a,
                        "response": a.response if principal.sees_phi and a.response != a.summary else "",
                    }
                    for a in d.attempt_log.all()
                ],
            }
        )
    return out


def _results(qs: QuerySet[FhirResource]) -> list[dict[str, Any]]:
    """The reports and observations fhirai wrote (as stored: the identified versions are what the
    hospital gets; the console shows their coded content, which names no patient)."""
    out = []
    for row in qs.order_by("resource_type", "id"):
        c = row.content
        code = c.get("code", {})
        display = code.get("text") or next((x.get("display", "") for x in code.get("coding", [])), "")
        value = ""
        if "valueQuantity" in c:
            q = c["valueQuantity"]
            value = f"{q.get('value')} {q.get('unit', q.get('code', ''))}"
        elif "valueCodeableConcept" in c:
            v = c["valueCodeableConcept"]
            value = v.get("text") or next((x.get("display", "") for x in v.get("coding", [])), "")
        elif row.resource_type == "DiagnosticReport":
            value = c.get("conclusion", "")
        out.append(
            {
                "ref": f"{row.resource_type}/{row.rid}",
                "version": row.version_id,
                "status": c.get("status", ""),
                "display": display,
                "value": value,
            }
        )
    return out


@console()
def study_page(request: HttpRequest, study_id: int) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    study = get_object_or_404(Study, pk=study_id)
    instances = list(study.instances.order_by("series_uid", "id").only("id", "series_uid", "modality"))
    chosen = None
    if request.GET.get("instance", "").isdigit():
        chosen = next((i for i in instances if i.pk == int(request.GET["instance"])), None)
    diff_rows, diff_error, preview_id = [], "", None
    try:
        representative = study_preview_instance(study)
        preview_id = representative.pk if representative else None
    except Exception as exc:  # noqa: BLE001 - the page shows the rest; the reason is said
        representative = None
        diff_error = f"no preview: {type(exc).__name__}"
    chosen = chosen or representative or (instances[0] if instances else None)
    if chosen is not None:
        try:
            from fhirai.ui.diff import instance_diff

            diff_rows = instance_diff(Instance.objects.get(pk=chosen.pk))
        except Exception as exc:  # noqa: BLE001 - an unreadable blob must not hide the timeline
            diff_error = f"the header could not be read: {type(exc).__name__}: {exc}"[:300]
    if principal.sees_phi:
        access_record(principal, "study.view", kind="study", ids=[study.pk], detail="console")
    series: dict[str, int] = {}
    for i in instances:
        series[i.series_uid] = series.get(i.series_uid, 0) + 1
    return _page(
        request,
        "console/study.html",
        "worklist",
        study=study,
        phi={
            "name": _person_name(study.patient_name),
            "born": _da(study.patient_birth_date),
            "study_date": _da(study.study_date),
        }
        if principal.sees_phi
        else {},
        pseudonyms={
            "patient": patient_pseudonym(study.patient_id, study.issuer_of_patient_id),
            "accession": accession_pseudonym(study.accession_number) if study.accession_number else "",
            "study_uid": uid_remap(study.study_uid),
        },
        timeline=_timeline("study", study.pk),
        jobs=InferenceJob.objects.filter(study=study).select_related("model", "prior_fetch").order_by("id"),
        results=_results(FhirResource.objects.filter(study=study)),
        deliveries=_deliveries(Delivery.objects.filter(study=study), principal),
        diff=diff_rows,
        diff_error=diff_error,
        instance=chosen,
        instances=instances[:2000],
        series_count=len(series),
        preview_id=preview_id,
        retryable=study.state == StudyState.FAILED,
        replayable=study.state in ops.REPLAYABLE,
    )


def _person_name(pn: str) -> str:
    """A DICOM PN (Family^Given^Middle^Prefix^Suffix) as people write it: Given Middle Family."""
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    return " ".join(p for p in (prefix, given, middle, family) if p) + (f", {suffix}" if suffix else "")


def _da(value: str) -> str:
    """A DICOM DA (YYYYMMDD) as YYYY-MM-DD; anything else as it is."""
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


@console()
def study_preview(request: HttpRequest, study_id: int) -> HttpResponse:
    """The study's representative image as PNG; the de-identified copy unless an identified role
    asks for the original (`?original=1`, audited: burned-in text may name the patient)."""
    principal: Principal = request.principal  # type: ignore[attr-defined]
    study = get_object_or_404(Study, pk=study_id)

    original = request.GET.get("original") == "1" and principal.sees_phi
    instance = None
    if request.GET.get("instance", "").isdigit():
        instance = Instance.objects.filter(study=study, pk=int(request.GET["instance"])).first()
    instance = instance or study_preview_instance(study)
    if instance is None:
        raise Http404("no image in this study")
    try:
        png = instance_preview_png(instance, deidentified=not original)
    except PreviewUnavailable as exc:
        return HttpResponse(str(exc), status=404, content_type="text/plain; charset=utf-8")
    if original:
        access_record(principal, "study.preview", kind="study", ids=[study.pk], detail="original pixels")
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response


@console()
def message_page(request: HttpRequest, message_id: int) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    message = get_object_or_404(Message, pk=message_id)
    report = ClinicalReport.objects.filter(message=message).first()
    diff_rows, diff_error = [], ""
    try:
        from fhirai.ui.diff import message_diff

        diff_rows = message_diff(message, limit=TEXT_LIMIT)
    except Exception as exc:  # noqa: BLE001 - a message that cannot be parsed still has a page
        diff_error = f"the message could not be compared: {type(exc).__name__}"
    raw = ""
    if principal.sees_phi:
        raw = bytes(message.raw).decode(message.codec or "utf-8", errors="replace").replace("\r", "\n")
        access_record(principal, "message.view", kind="message", ids=[message.pk], detail="console; raw text")
    return _page(
        request,
        "console/message.html",
        "worklist",
        message=message,
        raw=raw,
        report=report,
        timeline=_timeline("message", message.pk),
        jobs=InferenceJob.objects.filter(clinical_report=report).select_related("model").order_by("id")
        if report
        else [],
        results=_results(FhirResource.objects.filter(deliveries__clinical_report=report).distinct())
        if report
        else [],
        deliveries=_deliveries(Delivery.objects.filter(clinical_report=report), principal) if report else [],
        diff=diff_rows,
        diff_error=diff_error,
        retryable=message.state == MessageState.FAILED
        or (report is not None and report_state(report) == "failed"),
        replayable=message.state in (MessageState.PROCESSED, MessageState.FAILED),
    )


@console()
def report_page(request: HttpRequest, report_id: int) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    report = get_object_or_404(ClinicalReport.objects.select_related("resource", "patient"), pk=report_id)
    if report.message_id:
        return redirect("console:message", report.message_id)
    diff_rows, diff_error = [], ""
    try:
        from fhirai.ui.diff import report_diff

        diff_rows = report_diff(report, limit=TEXT_LIMIT)
    except Exception as exc:  # noqa: BLE001
        diff_error = f"the resource could not be compared: {type(exc).__name__}"
    if principal.sees_phi:
        access_record(principal, "report.view", kind="report", ids=[report.pk], detail="console")
    return _page(
        request,
        "console/report.html",
        "worklist",
        report=report,
        state=report_state(report),
        timeline=_timeline(*report.timeline()),
        jobs=InferenceJob.objects.filter(clinical_report=report).select_related("model").order_by("id"),
        results=_results(FhirResource.objects.filter(deliveries__clinical_report=report).distinct()),
        deliveries=_deliveries(Delivery.objects.filter(clinical_report=report), principal),
        diff=diff_rows,
        diff_error=diff_error,
        retryable=report_state(report) == "failed",
    )


# --- actions -------------------------------------------------------------------------------------
def _act(
    request: HttpRequest, back: str, action: str, kind: str, item_id: int, run: Callable[[str], object]
) -> HttpResponse:
    try:
        principal = _may_act(request)
        outcome = run(principal.name)
    except PermissionError as exc:
        return _forbidden(request, request.principal, str(exc))  # type: ignore[attr-defined]
    except ops.NotRetryable as exc:
        messages.error(request, str(exc))
    except NotFound as exc:
        raise Http404(str(exc)) from exc
    except FhiraiError as exc:
        messages.error(request, f"{action} failed: {exc}")
    else:
        access_record(principal, action, kind=kind, ids=[item_id], detail="console")
        text = outcome[1] if isinstance(outcome, tuple) else str(outcome)
        messages.success(request, text)
    return redirect(back)


@require_POST
@console()
def study_retry(request: HttpRequest, study_id: int) -> HttpResponse:
    back = reverse("console:study", args=[study_id])
    return _act(request, back, "study.retry", "study", study_id, lambda a: ops.study_retry(study_id, actor=a))


@require_POST
@console()
def study_replay(request: HttpRequest, study_id: int) -> HttpResponse:
    back = reverse("console:study", args=[study_id])
    return _act(
        request, back, "study.replay", "study", study_id, lambda a: ops.study_replay(study_id, actor=a)
    )


@require_POST
@console()
def message_retry(request: HttpRequest, message_id: int) -> HttpResponse:
    back = reverse("console:message", args=[message_id])

    def run(actor: str) -> str:
        message = get_object_or_404(Message, pk=message_id)
        if message.state == MessageState.FAILED:
            return ops.message_retry(message_id, actor=actor)
        report = ClinicalReport.objects.filter(message=message).first()
        if report is None:
            raise ops.NotRetryable(f"message {message_id} is {message.state}: nothing failed to retry")
        return ops.report_retry(report.pk, actor=actor)

    return _act(request, back, "message.retry", "message", message_id, run)


@require_POST
@console()
def message_replay(request: HttpRequest, message_id: int) -> HttpResponse:
    back = reverse("console:message", args=[message_id])
    return _act(
        request,
        back,
        "message.replay",
        "message",
        message_id,
        lambda a: ops.message_replay(message_id, actor=a),
    )


@require_POST
@console()
def report_retry(request: HttpRequest, report_id: int) -> HttpResponse:
    back = reverse("console:report", args=[report_id])
    return _act(
        request, back, "report.retry", "report", report_id, lambda a: ops.report_retry(report_id, actor=a)
    )


@require_POST
@console()
def delivery_retry(request: HttpRequest, delivery_id: int) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    if principal.role not in PHI_ROLES:  # before the lookup: a refused role learns nothing of the ids
        return _forbidden(request, principal, f"the {principal.role} role may not retry, replay or configure")
    delivery = get_object_or_404(Delivery, pk=delivery_id)
    if delivery.study_id:
        back = reverse("console:study", args=[delivery.study_id])
    elif delivery.clinical_report_id:
        back = reverse("console:report", args=[delivery.clinical_report_id])
    else:
        back = reverse("console:worklist")
    return _act(
        request,
        back,
        "delivery.retry",
        "delivery",
        delivery_id,
        lambda a: ops.delivery_retry(delivery_id, actor=a),
    )


@require_POST
@console()
def bulk_retry(request: HttpRequest) -> HttpResponse:
    """Retry every failed item the worklist's filter matches (at most BULK_MAX per press); items
    that someone else retried meanwhile are counted, not retried twice."""
    principal: Principal = request.principal  # type: ignore[attr-defined]
    if principal.role not in PHI_ROLES:
        return _forbidden(request, principal, f"the {principal.role} role may not retry")
    kind = request.POST.get("kind", "study")
    f = _filter_of(request.POST, principal)
    back = f"{reverse('console:worklist')}?{request.POST.get('query', '')}"
    qs = _items(kind, f, principal)
    if kind == "study":
        ids = list(qs.filter(state=StudyState.FAILED).values_list("pk", flat=True)[:BULK_MAX])
        retry_one: Callable[[int, str], object] = lambda i, a: ops.study_retry(i, actor=a)  # noqa: E731
    elif kind == "message":
        ids = list(qs.filter(state=MessageState.FAILED).values_list("pk", flat=True)[:BULK_MAX])
        retry_one = lambda i, a: ops.message_retry(i, actor=a)  # noqa: E731
    else:
        ids = [r.pk for r in qs[:BULK_MAX] if report_state(r) == "failed"]
        retry_one = lambda i, a: ops.report_retry(i, actor=a)  # noqa: E731
    done, skipped = [], 0
    for item_id in ids:
        try:
            retry_one(item_id, principal.name)
            done.append(item_id)
        except (ops.NotRetryable, NotFound):
            skipped += 1
    access_record(principal, f"{kind}.bulk_retry", kind=kind, ids=done, detail=f"console; {skipped} skipped")
    messages.success(
        request, f"{len(done)} failed {kind}(s) retried" + (f", {skipped} skipped" if skipped else "")
    )
    return redirect(back)


# --- configuration -------------------------------------------------------------------------------
@console(*CONFIG_ROLES)
def config(request: HttpRequest) -> HttpResponse:
    from fhirai.deid.models import ProfileVersion
    from fhirai.deid.profile import profile_current

    profile = profile_current()
    current = ProfileVersion.objects.filter(active=True).first()
    return _page(
        request,
        "console/config.html",
        "config",
        destinations=dest.destination_list(),
        new_peer=DestinationForm(initial={"enabled": True}),
        models=ModelRecord.objects.order_by("name", "version"),
        subscriptions=WebhookSubscription.objects.order_by("name"),
        profile=profile,
        profile_versions=ProfileVersion.objects.order_by("-created_at", "-id")[:20],
        profile_form=ProfileForm(
            initial={
                "name": current.name if current else "site",
                "options": sorted(profile.options),
                "private_safelist": "\n".join(current.private_safelist if current else []),
                "activate": True,
            }
        ),
        source_rules=SourceRule.objects.all(),
        dicom_allowed=dicom_calling_allowed(),
        mllp_allowed=mllp_networks(),
        sources={
            "DICOM AE title": settings.FHIRAI_DICOM_AE,
            "DICOM port": settings.FHIRAI_DICOM_PORT,
            "DICOM associations at most": settings.FHIRAI_DICOM_MAX_ASSOCIATIONS,
            "MLLP port": settings.FHIRAI_MLLP_PORT,
            "MLLP over TLS": "yes" if settings.FHIRAI_MLLP_TLS_CERT else "no",
            "Signed webhook sources (/hooks/NAME)": ", ".join(sorted(settings.FHIRAI_HOOK_SOURCES)) or "none",
            "API tokens required on /fhir/, /hl7/, /api/": "yes" if settings.FHIRAI_REQUIRE_TOKENS else "no",
        },
    )


@require_POST
@console(*CONFIG_ROLES)
def destination_save(request: HttpRequest) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    form = DestinationForm(request.POST)
    if not form.is_valid():
        for field, errors in form.errors.items():
            messages.error(request, f"{field}: {' '.join(errors)}")
        return redirect("console:config")
    try:
        view = dest.destination_save(
            form.cleaned_data["name"],
            form.cleaned_data["address"],
            enabled=form.cleaned_data["enabled"],
            actor=principal.name,
        )
    except dest.InvalidDestination as exc:
        messages.error(request, f"{form.cleaned_data['name']}: {exc}")
        return redirect("console:config")
    access_record(principal, "config.destination", kind="config", detail=f"{view.name} saved")
    messages.success(
        request, f"{view.name} now {'sends to' if view.enabled else 'is off; was'} {view.address}"
    )
    return redirect("console:config")


@require_POST
@console(*CONFIG_ROLES)
def destination_action(request: HttpRequest) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    name, action = request.POST.get("name", ""), request.POST.get("action", "")
    if action == "test":
        try:
            messages.success(request, dest.destination_probe(name))
        except Unavailable as exc:
            messages.error(request, str(exc))
    elif action == "reset":
        if dest.destination_reset(name):
            access_record(principal, "config.destination", kind="config", detail=f"{name} reset to settings")
            messages.success(request, f"{name}: the console's change is dropped; the settings apply")
    return redirect("console:config")


@require_POST
@console(*CONFIG_ROLES)
def model_toggle(request: HttpRequest, model_id: int) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    model = get_object_or_404(ModelRecord, pk=model_id)
    model.enabled = request.POST.get("enabled") == "1"
    model.save(update_fields=["enabled"])
    access_record(principal, "model.update", kind="model", ids=[model.pk], detail="console; enabled")
    messages.success(request, f"model {model} is {'enabled' if model.enabled else 'disabled'}")
    return redirect("console:config")


@require_POST
@console(*CONFIG_ROLES)
def model_accepts(request: HttpRequest, model_id: int) -> HttpResponse:
    """Change what a model is routed (checked: codes well-formed, NLP by message type only)."""
    from fhirai.routing.manifest import ManifestError, accepts_clean

    principal: Principal = request.principal  # type: ignore[attr-defined]
    model = get_object_or_404(ModelRecord, pk=model_id)
    form = AcceptsForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"model {model}: {form.errors.as_text()}")
        return redirect("console:config")
    try:
        accepts = accepts_clean(model.task, form.accepts())
    except ManifestError as exc:
        messages.error(request, f"model {model}: {exc}")
        return redirect("console:config")
    model.accepts = {**model.accepts, **accepts}
    model.save(update_fields=["accepts"])
    access_record(principal, "model.update", kind="model", ids=[model.pk], detail="console; accepts")
    messages.success(request, f"model {model} now accepts {_accepts_text(model.accepts)}")
    return redirect("console:config")


def _accepts_text(accepts: dict[str, list[str]]) -> str:
    return "; ".join(f"{k.replace('_', ' ')} {', '.join(v)}" for k, v in accepts.items() if v) or "nothing"


@require_POST
@console(*CONFIG_ROLES)
def profile_create(request: HttpRequest) -> HttpResponse:
    from fhirai.deid.versions import InvalidProfile, profile_version_create

    principal: Principal = request.principal  # type: ignore[attr-defined]
    form = ProfileForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"profile: {form.errors.as_text()}")
        return redirect("console:config")
    try:
        row = profile_version_create(
            form.cleaned_data["name"],
            options=form.cleaned_data["options"],
            private_safelist=form.safelist(),
            note=form.cleaned_data["note"],
            activate=form.cleaned_data["activate"],
        )
    except InvalidProfile as exc:
        messages.error(request, f"profile: {exc}")
        return redirect("console:config")
    access_record(principal, "config.deid", kind="config", detail=f"profile {row} created")
    messages.success(request, f"profile {row} saved" + (" and active" if row.active else ""))
    return redirect("console:config")


@require_POST
@console(*CONFIG_ROLES)
def profile_activate(request: HttpRequest, version_id: int) -> HttpResponse:
    from fhirai.deid.versions import profile_version_activate

    principal: Principal = request.principal  # type: ignore[attr-defined]
    try:
        row = profile_version_activate(version_id)
    except NotFound as exc:
        raise Http404(str(exc)) from exc
    access_record(principal, "config.deid", kind="config", detail=f"profile {row} activated")
    messages.success(request, f"profile {row} is now the site's de-identification profile")
    return redirect("console:config")


@require_POST
@console(*CONFIG_ROLES)
def source_rule(request: HttpRequest) -> HttpResponse:
    """Add or remove an allowed sender (a calling AE title, or an MLLP network)."""
    principal: Principal = request.principal  # type: ignore[attr-defined]
    if request.POST.get("remove", "").isdigit():
        row = source_rule_remove(int(request.POST["remove"]))
        if row is not None:
            access_record(principal, "config.source", kind="config", detail=f"{row} removed")
            messages.success(request, f"{row} removed")
        return redirect("console:config")
    try:
        row = source_rule_add(
            request.POST.get("kind", ""),
            request.POST.get("value", ""),
            note=request.POST.get("note", ""),
            actor=principal.name,
        )
    except InvalidSource as exc:
        messages.error(request, str(exc))
        return redirect("console:config")
    access_record(principal, "config.source", kind="config", detail=f"{row} added")
    messages.success(request, f"{row} allowed (listeners pick it up within {RULES_TTL:.0f} s)")
    return redirect("console:config")


@console(*CONFIG_ROLES)
def subscription_edit(request: HttpRequest, subscription_id: int | None = None) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    instance = get_object_or_404(WebhookSubscription, pk=subscription_id) if subscription_id else None
    if request.method == "POST":
        form = SubscriptionForm(request.POST, instance=instance)
        if form.is_valid():
            sub = form.save()
            access_record(
                principal, "config.webhook", kind="config", ids=[sub.pk], detail=f"{sub.name} saved"
            )
            messages.success(request, f"webhook subscription {sub.name} saved")
            return redirect("console:config")
    else:
        form = SubscriptionForm(instance=instance)
    return _page(request, "console/subscription.html", "config", form=form, subscription=instance)


# --- webhooks ------------------------------------------------------------------------------------
@console(*CONFIG_ROLES)
def webhooks(request: HttpRequest) -> HttpResponse:
    return _page(
        request,
        "console/webhooks.html",
        "webhooks",
        dead=webhooks_dead(),
        recent=WebhookDelivery.objects.select_related("subscription").order_by("-created_at", "-id")[:50],
    )


@require_POST
@console(*CONFIG_ROLES)
def webhook_replay_view(request: HttpRequest, delivery_id: int) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    try:
        replayed = webhook_replay(delivery_id)
    except NotFound as exc:
        raise Http404(str(exc)) from exc
    if replayed:
        access_record(principal, "webhook.replay", kind="webhook", ids=[delivery_id], detail="console")
        messages.success(request, f"webhook delivery {delivery_id} queued again")
    else:
        messages.error(
            request, f"webhook delivery {delivery_id} is not in the dead-letter list (replayed already?)"
        )
    return redirect("console:webhooks")


# --- audit ---------------------------------------------------------------------------------------
@console(*AUDIT_ROLES)
def audit(request: HttpRequest) -> HttpResponse:
    qs = AccessEvent.objects.order_by("-at", "-id")
    actor, action = request.GET.get("actor", "").strip(), request.GET.get("action", "").strip()
    if actor:
        qs = qs.filter(actor__icontains=actor)
    if action:
        qs = qs.filter(action__startswith=action)
    if request.GET.get("phi") == "1":
        qs = qs.filter(role__in=PHI_ROLES).exclude(action__startswith="config.")
    page = Paginator(qs, 100).get_page(request.GET.get("page"))
    keep = {k: v for k, v in request.GET.items() if k != "page" and v}
    from fhirai.deid.models import VaultAccess

    return _page(
        request,
        "console/audit.html",
        "audit",
        page=page,
        q=request.GET,
        query=urlencode(keep),
        vault=VaultAccess.objects.order_by("-at", "-id")[:50],
        json=json,
    )
