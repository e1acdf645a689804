"""What the domain does with patient and order context, whichever protocol brought it (an HL7 v2
ORM/OMI, a FHIR ServiceRequest or ImagingStudy): one path, so a study links to its order and
patient the same way from either."""

from __future__ import annotations

from fhirai.audit.timeline import Event, record
from fhirai.context.facts import OrderFacts
from fhirai.context.models import Order, Patient
from fhirai.context.records import order_upsert
from fhirai.ingest.models import Study
from fhirai.results.report import study_reports_refresh


def order_received(
    facts: OrderFacts, patient: Patient | None, *, render: bool = True, via: str = "order"
) -> tuple[Order, Study | None]:
    """Upsert the order and link it to the study with its accession number: a report written
    before its order arrived is rebuilt so it gains basedOn and the EHR's patient."""
    order = order_upsert(facts, patient, render=render)
    study = Study.objects.filter(accession_number=facts.accession).first()
    if study is not None:
        record("study", study.pk, Event.RECEIVED, detail=f"{via} {order.pk} linked by accession")
        study_reports_refresh(study.pk)
    return order, study
