"""What fhirai holds, as a PACS would list it: studies, their series and instances, found by the
attributes QIDO-RS queries (PS3.18 10.6.1.2). Reads only; the identified attributes it returns are
for callers that may see them (they check and audit)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from django.db.models import Count, Max, Q, QuerySet

from fhirai.ingest.models import Instance, Study

MAX_RESULTS = 1000


@dataclass(frozen=True)
class StudyQuery:
    study_uid: str = ""
    patient_id: str = ""
    patient_name: str = ""  # DICOM wildcards * and ? (PS3.4 C.2.2.2.4)
    accession: str = ""
    study_date: str = ""  # YYYYMMDD, or a range YYYYMMDD-YYYYMMDD (either end may be open)
    modality: str = ""


def _wildcard(value: str) -> str:
    """A DICOM wildcard value as a case-insensitive regex over the whole value."""
    return "^" + re.escape(value).replace(r"\*", ".*").replace(r"\?", ".") + "$"


def _date_range(value: str) -> tuple[str, str]:
    low, sep, high = value.partition("-")
    for part in (low, high):
        if part and not (len(part) == 8 and part.isdigit()):
            raise ValueError("StudyDate is YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        if part:
            date(int(part[:4]), int(part[4:6]), int(part[6:]))  # ValueError for 20241340
    return (low, high) if sep else (low, low)


def studies_find(q: StudyQuery, *, limit: int = 100, offset: int = 0) -> QuerySet[Study]:
    """Studies matching every given attribute, newest first, with series and instance counts.
    ValueError for a malformed query value."""
    qs = Study.objects.all()
    if q.study_uid:
        qs = qs.filter(study_uid__in=[u.strip() for u in q.study_uid.split(",") if u.strip()])
    if q.patient_id:
        qs = qs.filter(patient_id=q.patient_id)
    if q.patient_name:
        qs = qs.filter(patient_name__iregex=_wildcard(q.patient_name))
    if q.accession:
        qs = qs.filter(accession_number=q.accession)
    if q.study_date:
        low, high = _date_range(q.study_date)
        if low:
            qs = qs.filter(study_date__gte=low)
        if high:
            qs = qs.filter(study_date__lte=high)
    if q.modality:
        qs = qs.filter(Q(modalities=q.modality) | Q(modalities__regex=rf"(^|,){re.escape(q.modality)}(,|$)"))
    qs = qs.annotate(
        series_count=Count("instances__series_uid", distinct=True), instances_total=Count("instances")
    )
    limit = max(1, min(limit, MAX_RESULTS))
    return qs.order_by("-first_received_at", "-id")[offset : offset + limit]


def study_get(study_uid: str) -> Study | None:
    return Study.objects.filter(study_uid=study_uid).first()


def series_of(study: Study, series_uid: str = "") -> list[dict[str, object]]:
    """The study's series: uid, modality, instance count (optionally one series)."""
    qs = Instance.objects.filter(study=study)
    if series_uid:
        qs = qs.filter(series_uid=series_uid)
    rows = (
        qs.values("series_uid").annotate(count=Count("id"), modality=Max("modality")).order_by("series_uid")
    )
    return [dict(row) for row in rows]


def instances_of(study: Study, series_uid: str = "", sop_uid: str = "") -> QuerySet[Instance]:
    qs = Instance.objects.filter(study=study)
    if series_uid:
        qs = qs.filter(series_uid=series_uid)
    if sop_uid:
        qs = qs.filter(sop_instance_uid=sop_uid)
    return qs.order_by("series_uid", "instance_number", "id")
