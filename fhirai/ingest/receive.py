"""Durable receive of DICOM instances. Order (STYLE, invariant 1): blob written and fsynced, row
committed, then the caller acknowledges. Idempotent on SOPInstanceUID: the database refuses the
duplicate and the caller acknowledges it again without new work downstream (invariant 2)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from io import BytesIO

from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from fhirai import blobs
from fhirai.audit.timeline import Event, record
from fhirai.errors import InvalidInput, Unavailable
from fhirai.ingest.models import Instance, Rejection, Study, StudyState

log = logging.getLogger(__name__)

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class Received:
    instance_id: int
    study_id: int
    duplicate: bool


def header_parse(raw: bytes) -> Dataset:
    """The header of a Part 10 stream (no pixel decoding on the receive path)."""
    try:
        ds = dcmread(BytesIO(raw), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise InvalidInput("unparseable", f"cannot parse the dataset: {type(exc).__name__}") from None
    for keyword in REQUIRED_UIDS:
        value = str(ds.get(keyword, "") or "")
        if not value:
            raise InvalidInput("missing-attribute", f"{keyword} is missing")
        if not UID(value).is_valid:
            raise InvalidInput("invalid-uid", f"{keyword} is not a valid UID")
    return ds


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value)[:limit]


def _plane(ds: Dataset) -> str:
    """The plane the image lies in, from Image Orientation (Patient): the axis its normal is
    closest to (within about 30 degrees), else oblique; "" without an orientation."""
    try:
        iop = [float(v) for v in ds.get("ImageOrientationPatient") or []]
    except (TypeError, ValueError):
        return ""
    if len(iop) != 6:
        return ""
    r, c = iop[:3], iop[3:]
    normal = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]]
    axis = max(range(3), key=lambda i: abs(normal[i]))
    if abs(normal[axis]) < 0.866:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _instance_number(ds: Dataset) -> int | None:
    """InstanceNumber (IS) when it is a number that fits the column; None otherwise."""
    try:
        value = int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        return None
    return value if -(2**31) <= value < 2**31 else None


def _study_defaults(ds: Dataset, *, now: object, calling_ae: str) -> dict[str, object]:
    return {
        "state_changed_at": now,
        "first_received_at": now,
        "last_received_at": now,
        "patient_id": _text(ds, "PatientID", 64),
        "issuer_of_patient_id": _text(ds, "IssuerOfPatientID", 64),
        "patient_name": _text(ds, "PatientName", 324),
        "patient_birth_date": _text(ds, "PatientBirthDate", 8),
        "patient_sex": _text(ds, "PatientSex", 16),
        "accession_number": _text(ds, "AccessionNumber", 16),
        "study_date": _text(ds, "StudyDate", 8),
        "study_time": _text(ds, "StudyTime", 16),
        "study_description": _text(ds, "StudyDescription", 64),
        "body_part": _text(ds, "BodyPartExamined", 16),
        "modalities": _text(ds, "Modality", 16),
        "calling_ae": calling_ae[:16],
    }


def instance_receive(
    *, raw: bytes, calling_ae: str = "", transfer_syntax_uid: str = "", role: str = "clinical"
) -> Received:
    """Keep one instance durably. Returns only after the commit, so the caller may acknowledge.
    Raises InvalidInput for data that can never be stored as an instance, Unavailable when the
    blob store or database cannot take it now. `role` "prior": an instance of a prior study moved
    in for comparison (fhirai.routing.priors), which never opens a revision."""
    ds = header_parse(raw)
    key = blobs.put(raw, area="raw")
    try:
        return _instance_commit(
            ds,
            raw_size=len(raw),
            key=key,
            calling_ae=calling_ae,
            transfer_syntax_uid=transfer_syntax_uid,
            role=role,
        )
    except DatabaseError as exc:
        raise Unavailable(f"database: {type(exc).__name__}") from exc


def _instance_commit(
    ds: Dataset, *, raw_size: int, key: str, calling_ae: str, transfer_syntax_uid: str, role: str = "clinical"
) -> Received:
    now = timezone.now()
    tsuid = transfer_syntax_uid or str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "") or "")
    with transaction.atomic():
        study, created = Study.objects.get_or_create(
            study_uid=str(ds.StudyInstanceUID),
            defaults={**_study_defaults(ds, now=now, calling_ae=calling_ae), "role": role},
        )
        instance_id = _instance_insert(
            study_id=study.pk,
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            series_uid=str(ds.SeriesInstanceUID),
            modality=_text(ds, "Modality", 16),
            instance_number=_instance_number(ds),
            image_type=_text(ds, "ImageType", 128),
            plane=_plane(ds),
            series_description=_text(ds, "SeriesDescription", 64),
            transfer_syntax_uid=tsuid[:64],
            blob_key=key,
            size=raw_size,
            revision=study.revision,
            received_at=now,
            calling_ae=calling_ae[:16],
            deid_blob_key="",
        )
        if instance_id is None:
            existing = Instance.objects.only("id", "study_id").get(sop_instance_uid=str(ds.SOPInstanceUID))
            return Received(instance_id=existing.id, study_id=existing.study_id, duplicate=True)
        if created:
            record("study", study.id, Event.RECEIVED, detail=f"first instance from AE {calling_ae or '?'}")
            record("study", study.id, Event.ACKED, detail="committed; C-STORE Success returned")
        _study_touch(study, ds, instance_id=instance_id, now=now)
    return Received(instance_id=instance_id, study_id=study.id, duplicate=False)


def _instance_insert(**values: object) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id (PostgreSQL, SQLite >= 3.35): the unique
    SOPInstanceUID refuses a resend in one round trip, without a savepoint; None for a duplicate.
    This runs once per C-STORE, where each round trip is throughput."""
    table = Instance._meta.db_table
    columns = ", ".join(connection.ops.quote_name(name) for name in values)
    marks = ", ".join(["%s"] * len(values))
    sql = (
        f"INSERT INTO {connection.ops.quote_name(table)} ({columns}) VALUES ({marks}) "
        f"ON CONFLICT ({connection.ops.quote_name('sop_instance_uid')}) DO NOTHING RETURNING id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, list(values.values()))
        row = cursor.fetchone()
    return int(row[0]) if row else None


def _study_touch(study: Study, ds: Dataset, *, instance_id: int, now: object) -> None:
    """Count the new instance; a new instance in a study already past receiving opens a revision."""
    modality = _text(ds, "Modality", 16)
    if modality and modality not in study.modalities.split(","):
        Study.objects.filter(pk=study.pk).update(
            modalities=",".join(filter(None, [study.modalities, modality]))
        )
    receiving = Study.objects.filter(pk=study.pk)
    if study.role == "clinical":  # a prior study is kept for comparison: it has no revisions
        receiving = receiving.filter(state=StudyState.RECEIVING)
    counted = receiving.update(instance_count=F("instance_count") + 1, last_received_at=now)
    if counted:
        return
    Study.objects.filter(pk=study.pk).exclude(state=StudyState.RECEIVING).update(
        state=StudyState.RECEIVING,
        state_changed_at=now,
        revision=F("revision") + 1,
        error="",
        instance_count=F("instance_count") + 1,
        last_received_at=now,
    )
    Instance.objects.filter(pk=instance_id).update(revision=Study.objects.get(pk=study.pk).revision)
    record("study", study.id, Event.RECEIVED, detail="new instance after completion: revision opened")


def input_reject(*, protocol: str, raw: bytes, peer: str, code: str, detail: str) -> Rejection:
    """Keep refused input for inspection and replay before the refusal goes out (invariant 4).
    Detail must not carry PHI: it names attributes, never their values."""
    key = ""
    if raw:
        try:
            key = blobs.put(raw, area="rejected")
        except Unavailable:
            log.warning("rejected %s input from %s could not be kept: blob store unavailable", protocol, peer)
    rejection = Rejection.objects.create(
        protocol=protocol, peer=peer[:128], blob_key=key, code=code, detail=detail, received_at=timezone.now()
    )
    log.info("rejected %s input %s from %s: %s", protocol, rejection.pk, peer, code)
    return rejection
