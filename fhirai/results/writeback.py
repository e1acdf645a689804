"""Write-back of reports through an outbox (Delivery rows), one row per report version and
destination: the upstream FHIR server, and each HL7 v2 peer (ORU^R01 over MLLP). The first attempt
is dispatched when the report commits, later ones by pipeline_sweep with exponential backoff while
a destination is down; a destination that refuses (FHIR 4xx, HL7 AE/AR) is a visible failure.

FHIR: one transaction of conditional creates (ifNoneExist on identifiers; on the Provenance's
tag), so a retry after a lost response creates nothing twice. The domain defines the interfaces
(Upstream, ResultSender); settings plug the adapters in."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import quote

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string

from fhirai.audit.timeline import Event, record
from fhirai.celery import TASK_DELIVER, dispatch_on_commit
from fhirai.context.consent import clinical_report_optout, optout_detail, study_optout
from fhirai.errors import Unavailable
from fhirai.ingest.models import Study, StudyState
from fhirai.ingest.state import study_fail, study_transition
from fhirai.results.commitment import commitment_open, commitment_sent
from fhirai.results.destinations import (
    DICOM_PREFIX,
    FHIR_UPSTREAM,
    MLLP_PREFIX,
    destinations,
    fhir_upstream_url,
    pacs_peer,
)
from fhirai.results.models import Delivery, DeliveryAttempt, DeliveryState, FhirResource
from fhirai.results.package import ReportPackage, report_package
from fhirai.results.resources import references_rewrite
from fhirai.results.store import resource_read
from fhirai.routing.models import InferenceJob
from fhirai.webhooks.events import writeback_failed_emit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpstreamReply:
    status: int
    body: str
    summary: str = ""  # the adapter's own one-line account, when the body is not the server's


class Upstream(Protocol):
    def transaction(self, bundle: dict[str, Any]) -> UpstreamReply:
        """POST a transaction Bundle. Raises Unavailable on network errors, 429 and 5xx."""


def upstream() -> Upstream:
    """The configured upstream client (FHIRAI_FHIR_UPSTREAM_CLIENT) for the base URL in effect
    (fhirai.results.destinations: the settings, or the console's change). The SMART Backend Services
    settings are passed only when configured, so a client class without SMART support still fits."""
    factory = import_string(settings.FHIRAI_FHIR_UPSTREAM_CLIENT)
    smart = (
        {
            "client_id": settings.FHIRAI_FHIR_UPSTREAM_CLIENT_ID,
            "private_key": settings.FHIRAI_FHIR_UPSTREAM_PRIVATE_KEY,
            "key_id": settings.FHIRAI_FHIR_UPSTREAM_KEY_ID,
            "token_url": settings.FHIRAI_FHIR_UPSTREAM_TOKEN_URL,
            "scope": settings.FHIRAI_FHIR_UPSTREAM_SCOPE,
        }
        if settings.FHIRAI_FHIR_UPSTREAM_CLIENT_ID
        else {}
    )
    return factory(
        base_url=fhir_upstream_url(),
        token=settings.FHIRAI_FHIR_UPSTREAM_TOKEN,
        timeout=settings.FHIRAI_FHIR_UPSTREAM_TIMEOUT,
        **smart,
    )


@dataclass(frozen=True)
class Outcome:
    """What a destination answered: delivered or refused, with its status and reply for the record."""

    delivered: bool
    status: int | None
    reply: str
    summary: str = ""  # one line for the timeline: "HTTP 201", "MSA|AE|..."
    commitment_refused: str = ""  # a PACS that stored the objects but refused storage commitment: why


class ResultSender(Protocol):
    def __call__(self, peer: str, package: ReportPackage) -> Outcome:
        """Write one report to an HL7 peer. Raises Unavailable when the peer cannot be reached."""


def deliveries_create(report: FhirResource, study: Study | None, *, clinical_report: Any = None) -> int:
    """Queue this report version for every configured destination; returns how many. The report
    is about a study, or (NLP on a clinical report) about the message that carried the report."""
    now = timezone.now()
    # A PACS gets DICOM objects made from images: not the results read from a report's text.
    names = [n for n in destinations() if study is not None or not n.startswith(DICOM_PREFIX)]
    for name in names:
        delivery, created = Delivery.objects.get_or_create(
            report=report,
            destination=name,
            report_version=report.version_id,
            defaults={
                "study": study,
                "clinical_report": clinical_report,
                "created_at": now,
                "next_attempt_at": now,
            },
        )
        if created:
            dispatch_on_commit(TASK_DELIVER, delivery.pk)
    return len(names)


class DicomSender(Protocol):
    def __call__(
        self, peer: str, aet: str, host: str, port: int, objects: list[bytes], *, commitment_uid: str = ""
    ) -> Outcome:
        """C-STORE the objects to a PACS (and, with a transaction UID, ask it to commit them).
        Raises Unavailable when it cannot be reached."""


def report_dicom_objects(report: FhirResource) -> list[bytes]:
    """The DICOM objects of a report version for a PACS: the DICOM SR (TID 1500) and the key image
    of the job that wrote it, built from the identified originals, so they land in the original study."""
    from fhirai.results.report import report_id

    if report.study_id is None:
        return []
    study = report.study
    jobs = (
        InferenceJob.objects.filter(study=study, revision=study.revision)
        .exclude(sr_blob_key="")
        .select_related("model")
        .order_by("-id")
    )
    for job in jobs:
        if report_id(study.study_uid, job.model) == report.rid:
            from fhirai import blobs

            return [blobs.get(key) for key in (job.sr_blob_key, job.key_image_blob_key) if key]
    return []


def delivery_message_id(delivery: Delivery) -> str:
    """The wire message ID of a delivery (HL7 MSH-10, at most 20 characters): fixed per delivery,
    so a resend after a lost answer, a timeout or a killed worker repeats it and the receiver can
    recognise the duplicate (a fresh ID per attempt would make it file the result twice)."""
    return f"FAD{delivery.pk}"


def _send(delivery: Delivery) -> Outcome:
    destination, report = delivery.destination, delivery.report
    if destination == FHIR_UPSTREAM:
        if not fhir_upstream_url():
            raise Unavailable(f"destination {destination} is switched off or no longer configured")
        reply = upstream().transaction(report_bundle(report))
        return Outcome(200 <= reply.status < 300, reply.status, reply.body, reply_summary(reply))
    if destination.startswith(MLLP_PREFIX):
        sender: ResultSender = import_string(settings.FHIRAI_HL7_SENDER)
        package = replace(report_package(report), message_id=delivery_message_id(delivery))
        return sender(destination[len(MLLP_PREFIX) :], package)
    if destination.startswith(DICOM_PREFIX):
        peer = destination[len(DICOM_PREFIX) :]
        aet, host, port = pacs_peer(peer)
        objects = report_dicom_objects(report)
        if not objects:
            note = "no DICOM object for this report (a text result, or SR not built): nothing to send"
            return Outcome(True, None, note, note)
        dicom_sender: DicomSender = import_string(settings.FHIRAI_DICOM_SENDER)
        uid = commitment_open(delivery, objects)
        try:
            outcome = dicom_sender(peer, aet, host, port, objects, commitment_uid=uid)
        except Unavailable:
            commitment_sent(uid, delivered=False, answer="")
            raise
        commitment_sent(uid, delivered=outcome.delivered, answer=outcome.commitment_refused)
        return outcome
    raise Unavailable(f"destination {destination} is no longer configured")


def delivery_summary(delivery: Delivery) -> str:
    """One line for a delivery's last answer: the status and OperationOutcome codes, or the first
    line of the reply (the whole reply may echo patient data and is shown to identified roles only)."""
    if delivery.last_status is not None:
        return reply_summary(UpstreamReply(status=delivery.last_status, body=delivery.last_response))
    return delivery.last_response.splitlines()[0][:200] if delivery.last_response else ""


def reply_summary(reply: UpstreamReply) -> str:
    """One line for the timeline: the HTTP status and, for an OperationOutcome, each issue's code
    and location (its diagnostics stay in the delivery record: a server may echo patient data);
    the adapter's own summary when it gave one (e.g. a refused SMART token request)."""
    if reply.summary:
        return reply.summary
    summary = f"HTTP {reply.status}"
    try:
        body = json.loads(reply.body)
    except ValueError:
        return summary
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return summary
    issues = [
        f"{i.get('code', '?')}"
        + (f" at {', '.join(map(str, i['expression']))[:120]}" if i.get("expression") else "")
        for i in body.get("issue", [])[:3]
        if isinstance(i, dict)
    ]
    return f"{summary}: {'; '.join(issues)}" if issues else summary


def backoff(attempts: int) -> float:
    """Seconds before the next attempt: 2, 4, 8 ... capped at FHIRAI_WRITEBACK_BACKOFF_MAX."""
    return min(settings.FHIRAI_WRITEBACK_BACKOFF_MAX, 2.0 ** max(1, attempts))


def delivery_attempt(delivery_id: int) -> None:
    """Send one delivery if it is due and nobody else holds it."""
    now = timezone.now()
    claimed = Delivery.objects.filter(
        pk=delivery_id, state=DeliveryState.PENDING, next_attempt_at__lte=now
    ).update(state=DeliveryState.SENDING, claimed_at=now)
    if not claimed:
        return
    delivery = Delivery.objects.select_related("report", "study", "clinical_report").get(pk=delivery_id)
    opted_out = delivery_optout(delivery)
    if opted_out:
        _delivery_withhold(delivery, opted_out)
        return
    attempts = delivery.attempts + 1
    started = time.monotonic()
    try:
        outcome = _send(delivery)
    except Unavailable as exc:
        with transaction.atomic():
            _attempt_record(delivery, attempts, started, "unreachable", None, str(exc), str(exc))
            _delivery_retry_later(delivery, attempts, str(exc))
        return
    answer = outcome.summary or outcome.reply[:120]
    with transaction.atomic():
        if delivery.study_id is not None:
            # The study's last delivery moves it to written_back. Two destinations finishing at the
            # same moment (two workers) would each see the other still sending and neither would
            # move it: the study row's lock makes the second wait and then see the first.
            _study_lock(delivery.study_id)
        _attempt_record(
            delivery,
            attempts,
            started,
            "delivered" if outcome.delivered else "refused",
            outcome.status,
            answer,
            outcome.reply,
        )
        delivery.attempts, delivery.last_status = attempts, outcome.status
        delivery.last_response = outcome.reply[:8000]
        if not outcome.delivered:
            delivery.state = DeliveryState.FAILED
            delivery.save()
            _delivery_failed(delivery, f"{delivery.destination} refused the report: {answer}")
            return
        delivery.state, delivery.delivered_at = DeliveryState.DELIVERED, timezone.now()
        delivery.save()
        detail = f"{delivery.destination}: {answer} after {attempts} attempt(s)"
        if delivery.study_id is None:
            record(*_timeline_of(delivery), Event.WRITTEN_BACK, detail=detail)
        else:
            _study_settle(delivery, Event.WRITTEN_BACK, detail)


FINISHED = (DeliveryState.DELIVERED, DeliveryState.WITHHELD)


def delivery_optout(delivery: Delivery) -> list[str]:
    """The opt-out sources of the patient a delivery's report is about ([] when none). Asked
    before every attempt: an opt-out that arrives after routing (while the model ran, or while a
    destination was down) still keeps the result from leaving."""
    if delivery.study_id is not None:
        return study_optout(delivery.study)
    if delivery.clinical_report is not None:
        return clinical_report_optout(delivery.clinical_report)
    return []


def _delivery_withhold(delivery: Delivery, sources: list[str]) -> None:
    """Keep a claimed delivery from leaving: it ends withheld, and the timeline says why."""
    detail = f"{optout_detail(sources)}: the report is kept here, not written to {delivery.destination}"
    with transaction.atomic():
        if delivery.study_id is not None:
            _study_lock(delivery.study_id)
        delivery.state = DeliveryState.WITHHELD
        delivery.save(update_fields=["state"])
        if delivery.study_id is None:
            record(*_timeline_of(delivery), Event.SKIPPED, detail=detail)
        else:
            _study_settle(delivery, Event.SKIPPED, detail)


def _study_settle(delivery: Delivery, event: str, detail: str) -> None:
    """After one of a study's deliveries finished (under the study's lock): while others of the
    same report version are open, the timeline notes this one; once none is, the study ends
    written_back when any destination got the report, else no_model (all withheld: opt-out)."""
    siblings = Delivery.objects.filter(report_id=delivery.report_id, report_version=delivery.report_version)
    if siblings.exclude(state__in=FINISHED).exists():
        record("study", delivery.study_id, event, detail=detail)
        return
    sent = siblings.filter(state=DeliveryState.DELIVERED).exists()
    study_transition(
        delivery.study_id,
        from_states=[StudyState.REPORTED],
        to=StudyState.WRITTEN_BACK if sent else StudyState.NO_MODEL,
        event=event,
        detail=detail,
    )


def _study_lock(study_id: int) -> None:
    """Hold the study's row until the transaction ends: whoever decides that the study's last
    delivery is done (a worker finishing one, the sweep's reaper) does so one at a time."""
    list(Study.objects.select_for_update().filter(pk=study_id).values_list("pk", flat=True))


def written_back_reap() -> int:
    """Studies left in reported although every delivery of their current report versions was
    delivered or withheld (a state move lost to a race or a crash between the two): moved on."""
    cutoff = timezone.now() - timedelta(seconds=settings.FHIRAI_STALL_SECONDS)
    count = 0
    for study_id in Study.objects.filter(state=StudyState.REPORTED, state_changed_at__lte=cutoff).values_list(
        "pk", flat=True
    )[:200]:
        current = Delivery.objects.filter(study_id=study_id, report_version=F("report__version_id"))
        if not current.exists() or current.exclude(state__in=FINISHED).exists():
            continue
        with transaction.atomic():
            _study_lock(study_id)
            if current.exclude(state__in=FINISHED).exists():
                continue
            sent = current.filter(state=DeliveryState.DELIVERED).exists()
            count += bool(
                study_transition(
                    study_id,
                    from_states=[StudyState.REPORTED],
                    to=StudyState.WRITTEN_BACK if sent else StudyState.NO_MODEL,
                    event=Event.WRITTEN_BACK if sent else Event.SKIPPED,
                    detail="every destination has the report (state move recovered by the sweep)"
                    if sent
                    else "every delivery withheld: opt-out (state move recovered by the sweep)",
                )
            )
    return count


def _attempt_record(
    delivery: Delivery,
    number: int,
    started: float,
    outcome: str,
    status: int | None,
    summary: str,
    reply: str,
) -> None:
    DeliveryAttempt.objects.create(
        delivery=delivery,
        number=number,
        at=timezone.now(),
        seconds=round(time.monotonic() - started, 3),
        outcome=outcome,
        status=status,
        summary=summary[:300],
        response=reply[:8000],
    )


def _timeline_of(delivery: Delivery) -> tuple[str, int]:
    if delivery.study_id is not None or delivery.clinical_report is None:
        return "study", delivery.study_id or 0
    return delivery.clinical_report.timeline()


def _delivery_failed(delivery: Delivery, error: str) -> None:
    """A destination refused or stayed unreachable: the study fails visibly (a clinical report's
    NLP result: its message's timeline says so)."""
    writeback_failed_emit(delivery, error)  # webhooks: delivery.failed
    if delivery.study_id is None:
        record(*_timeline_of(delivery), Event.FAILED, error=error)
        return
    study_fail(delivery.study_id, error=error, from_states=[StudyState.REPORTED, StudyState.WRITTEN_BACK])


def _delivery_retry_later(delivery: Delivery, attempts: int, error: str) -> None:
    now = timezone.now()
    give_up = delivery.created_at + timedelta(seconds=settings.FHIRAI_WRITEBACK_GIVE_UP_SECONDS)
    with transaction.atomic():
        delivery.attempts, delivery.last_status, delivery.last_response = attempts, None, error[:8000]
        if now >= give_up:
            delivery.state = DeliveryState.FAILED
            delivery.save()
            _delivery_failed(
                delivery,
                f"{delivery.destination} unreachable for "
                f"{settings.FHIRAI_WRITEBACK_GIVE_UP_SECONDS:.0f} s: {error[:300]}",
            )
            return
        delivery.state = DeliveryState.PENDING
        delivery.next_attempt_at = now + timedelta(seconds=backoff(attempts))
        delivery.save()
        if attempts == 1 or attempts % 10 == 0:
            record(
                *_timeline_of(delivery),
                Event.RETRIED,
                detail=f"{delivery.destination} attempt {attempts} failed; next in {backoff(attempts):.0f} s",
                error=error[:500],
            )
    log.warning("delivery %s attempt %s failed (%s); retrying", delivery.pk, attempts, error[:200])


def deliveries_due() -> list[int]:
    """Deliveries to (re)try now: pending and due, or stuck in sending past the stall timeout."""
    now = timezone.now()
    stalled = now - timedelta(seconds=settings.FHIRAI_STALL_SECONDS)
    Delivery.objects.filter(state=DeliveryState.SENDING, claimed_at__lte=stalled).update(
        state=DeliveryState.PENDING, next_attempt_at=now
    )
    return list(
        Delivery.objects.filter(state=DeliveryState.PENDING, next_attempt_at__lte=now).values_list(
            "pk", flat=True
        )[:100]
    )


def delivery_redispatch(delivery_id: int) -> None:
    dispatch_on_commit(TASK_DELIVER, delivery_id)


def report_bundle(report: FhirResource) -> dict[str, Any]:
    """The transaction Bundle for one stored report version: Device, Observations and the
    DiagnosticReport as conditional updates on their identifiers (created the first time, updated
    when a study revision amends them, never duplicated by a retry), and this version's Provenance
    as a conditional create on its tag; cross-referenced by urn:uuid. ImagingStudy and Patient stay
    logical references by identifier: the upstream owns those records."""
    content = report.content
    observations = [
        resource_read("Observation", r["reference"].split("/", 1)[1]).content
        for r in content.get("result", [])
    ]
    devices = {o["device"]["reference"] for o in observations if "device" in o}
    provenance = [  # one per revision, each a conditional create: earlier ones are no-ops
        p.content
        for p in FhirResource.objects.filter(
            resource_type="Provenance", tokens__param="target", tokens__value=f"DiagnosticReport/{report.rid}"
        ).order_by("id")
    ]
    resources = [resource_read("Device", d.split("/", 1)[1]).content for d in sorted(devices)]
    resources += observations + [content] + provenance
    local = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:{r['id']}" for r in resources}
    entries = []
    for resource in resources:
        body = _rewrite_refs({k: v for k, v in resource.items() if k not in ("id", "meta")}, local)
        if resource.get("meta", {}).get("tag"):
            body["meta"] = {"tag": resource["meta"]["tag"]}
        rtype = resource["resourceType"]
        if resource.get("identifier"):
            ident = resource["identifier"][0]
            request = {
                "method": "PUT",
                "url": f"{rtype}?identifier={quote(ident['system'], safe=':/')}|{quote(ident['value'])}",
            }
        else:
            mark = resource["meta"]["tag"][0]
            request = {"method": "POST", "url": rtype, "ifNoneExist": f"_tag={mark['system']}|{mark['code']}"}
        entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": body, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _rewrite_refs(node: Any, local: dict[str, str]) -> Any:
    """Local references become the bundle's urn:uuids; references to resources not sent (the
    ImagingStudy) drop to their logical identifier."""

    def rewrite(ref: dict[str, Any]) -> dict[str, Any]:
        target = ref["reference"]
        if "/" not in target or target.startswith("urn:"):
            return ref
        if target in local:
            return {**ref, "reference": local[target]}
        return {k: v for k, v in ref.items() if k != "reference"} if "identifier" in ref else ref

    return references_rewrite(node, rewrite)
