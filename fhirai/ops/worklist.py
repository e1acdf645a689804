"""The worklist's filters, shared by the console and the REST API: studies, HL7 messages and
FHIR-sourced clinical reports, by state, source, model, date and patient pseudonym, and (for
roles that may see identified data; the callers check and audit) by MRN, name or accession.
Filters never put PHI in logs; a pseudonym is mapped back through the vault (which audits it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet

from fhirai.context.models import ClinicalReport
from fhirai.deid.vault import vault_lookup
from fhirai.errors import NotFound
from fhirai.ingest.models import Message, Rejection, Study

KINDS = ("study", "message", "report")
PHI_FILTERS = ("mrn", "name", "accession")


@dataclass(frozen=True)
class ItemFilter:
    state: str = ""
    source: str = ""  # calling AE title, HL7 sender, or (reports) the resource's id prefix
    model: str = ""
    received_from: datetime | None = None
    received_to: datetime | None = None
    patient: str = ""  # the patient's pseudonym
    mrn: str = ""
    name: str = ""
    accession: str = ""

    @property
    def phi_searched(self) -> list[str]:
        return [k for k in PHI_FILTERS if getattr(self, k)]


def _patient_of(pseudonym: str, actor: str) -> tuple[str, str] | None:
    """(issuer, patient id) behind a patient pseudonym, None when this site never issued it."""
    try:
        original = vault_lookup("patient-id", pseudonym.strip(), purpose=f"worklist filter by {actor}"[:64])
    except NotFound:
        return None
    issuer, _, patient_id = original.rpartition("\x1f")
    return issuer, patient_id


def studies_filter(f: ItemFilter, *, actor: str) -> QuerySet[Study]:
    qs = Study.objects.all()
    if f.state:
        qs = qs.filter(state=f.state)
    if f.source:
        qs = qs.filter(calling_ae=f.source)
    if f.model:
        qs = qs.filter(jobs__model__name=f.model).distinct()
    if f.received_from:
        qs = qs.filter(first_received_at__gte=f.received_from)
    if f.received_to:
        qs = qs.filter(first_received_at__lt=f.received_to)
    if f.patient:
        patient = _patient_of(f.patient, actor)
        if patient is None:
            return Study.objects.none()
        qs = qs.filter(issuer_of_patient_id=patient[0], patient_id=patient[1])
    if f.mrn:
        qs = qs.filter(patient_id=f.mrn.strip())
    if f.name:
        qs = qs.filter(patient_name__icontains=f.name.strip())
    if f.accession:
        qs = qs.filter(accession_number=f.accession.strip())
    return qs.order_by("-first_received_at", "-id")


def messages_filter(f: ItemFilter, *, actor: str, message_type: str = "") -> QuerySet[Message]:
    qs = Message.objects.defer("raw")
    if f.state:
        qs = qs.filter(state=f.state)
    if f.source:
        qs = qs.filter(sender=f.source)
    if message_type:
        qs = qs.filter(message_type=message_type)
    if f.model:
        qs = qs.filter(clinical_report__jobs__model__name=f.model).distinct()
    if f.received_from:
        qs = qs.filter(received_at__gte=f.received_from)
    if f.received_to:
        qs = qs.filter(received_at__lt=f.received_to)
    patient_q = _patient_q(f, actor, "clinical_report__patient__")
    if patient_q is None:
        return Message.objects.none()
    if f.accession:
        patient_q &= Q(clinical_report__accession=f.accession.strip())
    return qs.filter(patient_q).order_by("-received_at", "-id")


def reports_filter(f: ItemFilter, *, actor: str) -> QuerySet[ClinicalReport]:
    """Clinical reports that came as FHIR resources (those from HL7 are listed as messages)."""
    qs = ClinicalReport.objects.filter(resource__isnull=False).select_related("resource")
    if f.state == "failed":
        qs = qs.filter(Q(jobs__state="failed") | Q(deliveries__state="failed")).distinct()
    elif f.state == "pending":
        qs = qs.filter(deid_blob_key="")
    elif f.state:
        qs = qs.filter(jobs__state=f.state).distinct()
    if f.source:
        qs = qs.filter(resource__rid__startswith=f.source)
    if f.model:
        qs = qs.filter(jobs__model__name=f.model).distinct()
    if f.received_from:
        qs = qs.filter(received_at__gte=f.received_from)
    if f.received_to:
        qs = qs.filter(received_at__lt=f.received_to)
    patient_q = _patient_q(f, actor, "patient__")
    if patient_q is None:
        return ClinicalReport.objects.none()
    if f.accession:
        patient_q &= Q(accession=f.accession.strip())
    return qs.filter(patient_q).order_by("-received_at", "-id")


def _patient_q(f: ItemFilter, actor: str, prefix: str) -> Q | None:
    """The patient conditions on a context Patient (pseudonym, MRN, name); None: matches nothing."""
    q = Q()
    if f.patient:
        patient = _patient_of(f.patient, actor)
        if patient is None:
            return None
        q &= Q(**{f"{prefix}mrn": patient[1]})
    if f.mrn:
        q &= Q(**{f"{prefix}mrn": f.mrn.strip()})
    if f.name:
        name = f.name.strip()
        q &= Q(**{f"{prefix}family__icontains": name}) | Q(**{f"{prefix}given__icontains": name})
    return q


def rejections_filter(f: ItemFilter) -> QuerySet[Rejection]:
    """Input refused at the door (kept for inspection): by protocol as the source, code as state."""
    qs = Rejection.objects.all()
    if f.state:
        qs = qs.filter(code=f.state)
    if f.source:
        qs = qs.filter(Q(protocol=f.source) | Q(peer__icontains=f.source))
    if f.received_from:
        qs = qs.filter(received_at__gte=f.received_from)
    if f.received_to:
        qs = qs.filter(received_at__lt=f.received_to)
    return qs.order_by("-received_at", "-id")


def report_state(report: ClinicalReport) -> str:
    """A clinical report's state as one word: failed (a job or delivery failed), pending (not yet
    de-identified), queued (work left), done."""
    states = {j.state for j in report.jobs.all()} | {d.state for d in report.deliveries.all()}
    if "failed" in states:
        return "failed"
    if not report.deid_blob_key:
        return "pending"
    return "queued" if states - {"done", "delivered", "withheld"} else "done"
