"""Priors: the patient's previous comparable study, for the models whose manifest asks for one
("priors": {"max_age_days": N, "required": bool}).

When such a model is routed a study, its job waits (JobState.WAITING) while a PriorFetch looks for
the prior, in order:

1. among the studies fhirai already holds and has de-identified: same patient (ID and issuer), an
   earlier study date within max_age_days, a study the model would accept with a series it reads;
2. at the PACS named by FHIRAI_PRIORS_PACS: C-FIND (study root; the study level, then the series
   of the most recent candidates for their modality and body part), the most recent comparable
   study chosen, then C-MOVE of that study to FHIRAI_PRIORS_AE, an AE title of fhirai's own SCP
   (same port) that takes a C-STORE only for a study a fetch is moving. The moved study is a Study
   with role "prior": de-identified like any study (the same patient pseudonym and date shift,
   so intervals hold), never routed to a model or reported on its own.

Then the job gets the de-identified instances of the prior's series the model reads
(prior_inputs) and is dispatched. With no prior in time (FHIRAI_PRIORS_TIMEOUT) the job runs
without one, or fails when the manifest requires it; either way the study's timeline says why.
The PACS conversation is the integration's (FHIRAI_PRIORS_CLIENT, integrations.dicom.qr); this
module decides what to ask and what to do with the answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from fhirai.audit.timeline import Event, record
from fhirai.celery import TASK_DEIDENTIFY, TASK_PRIOR_FETCH, dispatch_on_commit
from fhirai.errors import InvalidInput, Unavailable
from fhirai.ingest.models import Study, StudyState
from fhirai.ingest.receive import Received, header_parse, instance_receive
from fhirai.ingest.state import study_fail, study_transition
from fhirai.results.destinations import pacs_address
from fhirai.results.task import job_task_put
from fhirai.routing.jobs import job_dispatch
from fhirai.routing.manifest import ManifestError, priors_clean
from fhirai.routing.models import InferenceJob, JobState, ModelRecord, PriorFetch, PriorState
from fhirai.routing.rules import model_accepts, series_select

log = logging.getLogger(__name__)
PRIOR_ROLE = "prior"
# States in which a held study has been de-identified (its instances' deid_blob_key are set).
DEIDENTIFIED_STATES = (StudyState.QUEUED, StudyState.REPORTED, StudyState.WRITTEN_BACK, StudyState.NO_MODEL)
CANDIDATES_CHECKED = 5  # the most recent studies whose series are asked for, per fetch


@dataclass(frozen=True)
class Candidate:
    """A study the PACS holds for the patient, as its C-FIND answers describe it."""

    study_uid: str
    study_date: str  # YYYYMMDD, "" when the PACS gave none
    modalities: tuple[str, ...]
    description: str = ""
    body_parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Moved:
    """The final C-MOVE response: sub-operations completed, failed and with warnings."""

    completed: int
    failed: int
    warning: int
    detail: str


class PriorsClient(Protocol):
    def studies_find(
        self, *, patient_id: str, issuer: str, earliest: str, latest: str, modalities: list[str]
    ) -> list[Candidate]: ...

    def study_move(self, study_uid: str, *, destination: str, timeout: float) -> Moved: ...


def priors_client() -> PriorsClient | None:
    """The PACS priors are fetched from (FHIRAI_PRIORS_PACS), or None when none is configured."""
    if not settings.FHIRAI_PRIORS_PACS.strip():
        return None
    aet, host, port = pacs_address(settings.FHIRAI_PRIORS_PACS)
    return import_string(settings.FHIRAI_PRIORS_CLIENT)(aet, host, port)


def model_priors(model: ModelRecord) -> dict[str, Any]:
    """The model's priors request ({} when it reads none), from its registered manifest."""
    try:
        return priors_clean(model.task, (model.manifest or {}).get("priors"))
    except ManifestError:
        return {}


def prior_fetch_start(job: InferenceJob) -> None:
    """The job waits for its prior: record the search and queue it (in the routing transaction)."""
    now = timezone.now()
    PriorFetch.objects.create(job=job, started_at=now, dispatched_at=now)
    record("study", job.study_id, Event.PRIOR, detail=f"{job.model}: looking for the prior study")
    dispatch_on_commit(TASK_PRIOR_FETCH, job.pk)


def prior_job_restart(job: InferenceJob) -> bool:
    """A failed job of a model that reads a prior runs again from the search for its prior
    (conditional: only if it is still failed). True when this call restarted it."""
    now = timezone.now()
    with transaction.atomic():
        moved = InferenceJob.objects.filter(pk=job.pk, state=JobState.FAILED).update(
            state=JobState.WAITING, attempts=0, error="", finished_at=None, dispatched_at=now, prior_inputs=[]
        )
        if not moved:
            return False
        PriorFetch.objects.update_or_create(
            job=job,
            defaults={
                "state": PriorState.SEARCHING,
                "source": "",
                "study_uid": "",
                "prior_study": None,
                "moved": 0,
                "interval_days": None,
                "detail": "",
                "started_at": now,
                "dispatched_at": now,
                "finished_at": None,
            },
        )
        job.refresh_from_db()
        job_task_put(job)
        record("study", job.study_id, Event.PRIOR, detail=f"{job.model}: looking for the prior study again")
        dispatch_on_commit(TASK_PRIOR_FETCH, job.pk)
    return True


def prior_fetch(job_id: int) -> None:
    """Find the job's prior (fhirai's own studies first, then the PACS) and move it in. Runs on the
    default queue; safe to run twice (each step is a conditional update of the fetch)."""
    fetch = PriorFetch.objects.select_related("job__study", "job__model").filter(job_id=job_id).first()
    if fetch is None or fetch.state != PriorState.SEARCHING or fetch.job.state != JobState.WAITING:
        return
    job, study = fetch.job, fetch.job.study
    spec = model_priors(job.model)
    earliest, latest = _window(study, spec)
    if not latest:
        _prior_none(fetch.pk, "the study has no study date to look back from")
        return
    held = _held_prior(study, job.model, earliest, latest)
    if held is not None:
        if _fetch_advance(fetch.pk, PriorState.SEARCHING, PriorState.RECEIVED, held, source="fhirai"):
            prior_ready(fetch.pk)
        return
    client = priors_client()
    if client is None:
        _prior_none(fetch.pk, "no earlier comparable study in fhirai and no PACS to ask (FHIRAI_PRIORS_PACS)")
        return
    try:
        found = client.studies_find(
            patient_id=study.patient_id,
            issuer=study.issuer_of_patient_id,
            earliest=earliest,
            latest=latest,
            modalities=_modalities(job.model, study),
        )
    except Unavailable as exc:
        if _timed_out(fetch):
            _prior_none(fetch.pk, f"the PACS query failed: {exc}")
            return
        raise  # the task retries with backoff until FHIRAI_PRIORS_TIMEOUT
    chosen = candidate_choose(found, study=study, model=job.model, earliest=earliest, latest=latest)
    if chosen is None:
        _prior_none(
            fetch.pk, f"the PACS has no comparable earlier study ({len(found)} of the patient's found)"
        )
        return
    held_study = Study.objects.filter(study_uid=chosen.study_uid).first()
    if held_study is not None and held_study.role != PRIOR_ROLE:
        _prior_none(fetch.pk, f"the comparable study is study {held_study.pk} here, not de-identified yet")
        return
    with transaction.atomic():
        moved = PriorFetch.objects.filter(pk=fetch.pk, state=PriorState.SEARCHING).update(
            state=PriorState.MOVING, source="pacs", study_uid=chosen.study_uid
        )
        if not moved:
            return
        record(
            "study",
            study.pk,
            Event.PRIOR,
            detail=f"{job.model}: C-MOVE of the prior study from the PACS "
            f"({_days_between(chosen.study_date, study.study_date)} days earlier)",
        )
    remaining = max(5.0, settings.FHIRAI_PRIORS_TIMEOUT - (timezone.now() - fetch.started_at).total_seconds())
    try:
        result = client.study_move(chosen.study_uid, destination=settings.FHIRAI_PRIORS_AE, timeout=remaining)
    except Unavailable as exc:
        _prior_none(fetch.pk, f"the C-MOVE failed: {exc}", from_state=PriorState.MOVING)
        return
    prior = Study.objects.filter(study_uid=chosen.study_uid, role=PRIOR_ROLE).first()
    if prior is None or prior.instance_count == 0:
        _prior_none(fetch.pk, f"the PACS sent nothing: {result.detail}", from_state=PriorState.MOVING)
        return
    with transaction.atomic():
        if not _fetch_advance(
            fetch.pk,
            PriorState.MOVING,
            PriorState.RECEIVED,
            prior,
            moved=result.completed,
            detail=result.detail,
        ):
            return
        # The final C-MOVE response comes after the last sub-operation: the study is all here.
        if study_transition(
            prior.pk,
            from_states=[StudyState.RECEIVING],
            to=StudyState.COMPLETE,
            event=Event.COMPLETE,
            detail=f"prior for study {study.pk}: {result.detail}",
            revision=prior.revision,
        ):
            dispatch_on_commit(TASK_DEIDENTIFY, prior.pk)
    prior.refresh_from_db()
    if prior.state == StudyState.NO_MODEL:  # moved before, for another job, and de-identified then
        prior_ready(fetch.pk)


def prior_instance_receive(*, raw: bytes, calling_ae: str = "", transfer_syntax_uid: str = "") -> Received:
    """A C-STORE to the priors AE title: kept as an instance of a prior study when a fetch is moving
    that study, refused (InvalidInput "not-requested") otherwise, so the priors title is no back
    door into the pipeline."""
    ds = header_parse(raw)
    if not PriorFetch.objects.filter(state=PriorState.MOVING, study_uid=str(ds.StudyInstanceUID)).exists():
        raise InvalidInput(
            "not-requested", "sent to the priors AE title, but no prior fetch is moving this study"
        )
    return instance_receive(
        raw=raw, calling_ae=calling_ae, transfer_syntax_uid=transfer_syntax_uid, role=PRIOR_ROLE
    )


def prior_study_routed(study: Study) -> None:
    """A de-identified prior study: it is read by no model on its own; the jobs waiting for it go."""
    study_transition(
        study.pk,
        from_states=[StudyState.DEIDENTIFIED],
        to=StudyState.NO_MODEL,
        event=Event.SKIPPED,
        detail="a prior study, fetched for comparison: not read on its own",
        revision=study.revision,
    )
    for fetch_id in PriorFetch.objects.filter(prior_study=study, state=PriorState.RECEIVED).values_list(
        "pk", flat=True
    ):
        prior_ready(fetch_id)


def prior_ready(fetch_id: int) -> None:
    """The prior is de-identified: give the job the instances it reads of it and dispatch the job."""
    with transaction.atomic():
        fetch = (
            PriorFetch.objects.select_for_update(of=("self",))
            .select_related("job__model", "job__study", "prior_study")
            .filter(pk=fetch_id, state=PriorState.RECEIVED)
            .first()
        )
        if fetch is None or fetch.prior_study is None:
            return
        selection = series_select(fetch.job.model, fetch.prior_study)
        if not selection.inputs:
            _prior_none(
                fetch.pk, "the prior study has no series the model reads", from_state=PriorState.RECEIVED
            )
            return
        prior = fetch.prior_study
        days = _days_between(prior.study_date, fetch.job.study.study_date)
        detail = (
            f"prior study {prior.pk} from {fetch.source}, {days if days is not None else '?'} days earlier: "
            f"{len(selection.inputs)} instance(s)"
        )
        PriorFetch.objects.filter(pk=fetch.pk).update(
            state=PriorState.READY,
            interval_days=days,
            finished_at=timezone.now(),
            detail=(fetch.detail + "; " + detail).strip("; "),
        )
        _job_release(
            fetch.job, [i.deid_blob_key for i in selection.inputs], detail=f"{fetch.job.model}: {detail}"
        )


def priors_sweep() -> int:
    """Fetches that lost their task are queued again; those past FHIRAI_PRIORS_TIMEOUT (twice that
    once the C-MOVE has begun: de-identifying the prior takes its time too) end without a prior."""
    now = timezone.now()
    timeout = timedelta(seconds=settings.FHIRAI_PRIORS_TIMEOUT)
    count = 0
    stalled = now - timedelta(seconds=settings.FHIRAI_STALL_SECONDS)
    for fetch in PriorFetch.objects.filter(state=PriorState.SEARCHING, dispatched_at__lte=stalled)[:200]:
        if fetch.started_at <= now - timeout:
            count += _prior_none(fetch.pk, f"no prior found within {settings.FHIRAI_PRIORS_TIMEOUT:.0f} s")
            continue
        with transaction.atomic():
            if PriorFetch.objects.filter(
                pk=fetch.pk, state=PriorState.SEARCHING, dispatched_at__lte=stalled
            ).update(dispatched_at=now):
                dispatch_on_commit(TASK_PRIOR_FETCH, fetch.job_id)
                count += 1
    for fetch in PriorFetch.objects.filter(
        state__in=[PriorState.MOVING, PriorState.RECEIVED], started_at__lte=now - 2 * timeout
    ).select_related("prior_study")[:200]:
        count += _prior_none(
            fetch.pk,
            f"the prior did not arrive within {2 * settings.FHIRAI_PRIORS_TIMEOUT:.0f} s",
            from_state=fetch.state,
        )
    for fetch in PriorFetch.objects.filter(state=PriorState.RECEIVED, prior_study__state=StudyState.FAILED)[
        :200
    ]:
        count += _prior_none(
            fetch.pk, "the prior study could not be de-identified", from_state=PriorState.RECEIVED
        )
    return count


def candidate_choose(
    found: list[Candidate], *, study: Study, model: ModelRecord, earliest: str, latest: str
) -> Candidate | None:
    """The most recent study in the window the model would accept (modality, body part or
    description), other than the study itself."""
    wanted = set(_modalities(model, study))
    regions = [r.upper() for r in (model.accepts or {}).get("body_parts", [])]
    fitting = []
    for c in found:
        if c.study_uid == study.study_uid or not c.study_date or not earliest <= c.study_date <= latest:
            continue
        if wanted and c.modalities and not wanted & {m.upper() for m in c.modalities}:
            continue
        text = " ".join((*c.body_parts, c.description)).upper()
        if regions and not any(region in text for region in regions):
            continue
        fitting.append(c)
    return max(fitting, key=lambda c: c.study_date, default=None)


def _window(study: Study, spec: dict[str, Any]) -> tuple[str, str]:
    """(earliest, latest) study dates, YYYYMMDD, a prior may have: max_age_days back, up to the
    day before the study's; ("", "") when the study has no valid date."""
    try:
        day = date(int(study.study_date[:4]), int(study.study_date[4:6]), int(study.study_date[6:8]))
    except ValueError:
        return "", ""
    earliest = day - timedelta(days=int(spec.get("max_age_days", 1825)))
    return earliest.strftime("%Y%m%d"), (day - timedelta(days=1)).strftime("%Y%m%d")


def _days_between(earlier: str, later: str) -> int | None:
    try:
        first = date(int(earlier[:4]), int(earlier[4:6]), int(earlier[6:8]))
        last = date(int(later[:4]), int(later[4:6]), int(later[6:8]))
    except ValueError:
        return None
    return (last - first).days


def _modalities(model: ModelRecord, study: Study) -> list[str]:
    """The modalities a prior may be of: the model's that the study has (the study's own when the
    model names none)."""
    own = [m.upper() for m in study.modalities.split(",") if m]
    accepted = {m.upper() for m in (model.accepts or {}).get("modalities", [])}
    return [m for m in own if not accepted or m in accepted]


def _held_prior(study: Study, model: ModelRecord, earliest: str, latest: str) -> Study | None:
    """The most recent de-identified study fhirai holds of the same patient, in the window, that the
    model would read."""
    if not study.patient_id:
        return None
    held = (
        Study.objects.filter(
            patient_id=study.patient_id,
            issuer_of_patient_id=study.issuer_of_patient_id,
            state__in=DEIDENTIFIED_STATES,
            study_date__gte=earliest,
            study_date__lte=latest,
        )
        .exclude(pk=study.pk)
        .order_by("-study_date", "-study_time", "-pk")
    )
    for candidate in held[:CANDIDATES_CHECKED]:
        if model_accepts(model, candidate) and series_select(model, candidate).inputs:
            return candidate
    return None


def _timed_out(fetch: PriorFetch) -> bool:
    return (timezone.now() - fetch.started_at).total_seconds() >= settings.FHIRAI_PRIORS_TIMEOUT


def _fetch_advance(
    fetch_id: int,
    from_state: str,
    to: str,
    prior: Study,
    *,
    source: str = "",
    moved: int = 0,
    detail: str = "",
) -> bool:
    fields: dict[str, Any] = {"state": to, "prior_study": prior, "study_uid": prior.study_uid}
    if source:
        fields["source"] = source
    if moved:
        fields["moved"] = moved
    if detail:
        fields["detail"] = detail[:2000]
    return bool(PriorFetch.objects.filter(pk=fetch_id, state=from_state).update(**fields))


def _prior_none(fetch_id: int, reason: str, *, from_state: str = PriorState.SEARCHING) -> int:
    """No prior for this job: it runs without one, or fails when its manifest requires one."""
    with transaction.atomic():
        fetch = (
            PriorFetch.objects.select_for_update(of=("self",))
            .select_related("job__model")
            .filter(pk=fetch_id, state=from_state)
            .first()
        )
        if fetch is None:
            return 0
        job = fetch.job
        required = bool(model_priors(job.model).get("required"))
        fetch.state = PriorState.FAILED if required else PriorState.NONE
        fetch.detail, fetch.finished_at = reason[:2000], timezone.now()
        fetch.save(update_fields=["state", "detail", "finished_at"])
        if not required:
            _job_release(job, [], detail=f"{job.model}: no prior ({reason}); it runs without one")
            return 1
        failed = InferenceJob.objects.filter(pk=job.pk, state=JobState.WAITING).update(
            state=JobState.FAILED, error=f"no prior study: {reason}"[:2000], finished_at=timezone.now()
        )
        if failed:
            job.refresh_from_db()
            job_task_put(job)
            study_fail(
                job.study_id,
                error=f"job {job.pk} ({job.model_id}) requires a prior study: {reason}"[:500],
                from_states=[StudyState.QUEUED],
            )
    return 1


def _job_release(job: InferenceJob, prior_inputs: list[str], *, detail: str) -> None:
    """WAITING -> QUEUED with its prior inputs, dispatched (conditional: once)."""
    moved = InferenceJob.objects.filter(pk=job.pk, state=JobState.WAITING).update(
        state=JobState.QUEUED, prior_inputs=prior_inputs, dispatched_at=timezone.now(), attempts=1
    )
    if not moved:
        return
    record("study", job.study_id, Event.PRIOR, detail=detail[:1500])
    job.refresh_from_db()
    job_task_put(job)
    job_dispatch(job)
