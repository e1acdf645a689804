"""Durable receive of DICOM instances. Order (STYLE, invariant 1): blob written and fsynced, row
committed, then the caller acknowledges. Idempotent on SOPInstanceUID: the database refuses the
duplicate and the caller acknowledges it again without new work downstream (invariant 2)."""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from io import BytesIO

from django.db import DatabaseError, connection, models, transaction
from django.db.models import F
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from fhirai import blobs
from fhirai.audit.models import TimelineEvent
from fhirai.audit.timeline import Event, record
from fhirai.errors import InvalidInput, Unavailable
from fhirai.ingest.header import KEYWORDS, header_read
from fhirai.ingest.models import Instance, Rejection, Study, StudyState

log = logging.getLogger(__name__)

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class Received:
    instance_id: int
    study_id: int
    duplicate: bool


def header_parse(raw: bytes) -> Dataset:
    """The header of a Part 10 stream (no pixel decoding on the receive path): the indexed
    elements only when fhirai.ingest.header can find them, else pydicom's whole header."""
    ds = header_read(raw)
    if ds is None:
        try:
            ds = dcmread(BytesIO(raw), stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - bytes in memory: whatever pydicom raises (struct.error, OSError...) is the data's
            raise InvalidInput("unparseable", f"cannot parse the dataset: {type(exc).__name__}") from None
    for keyword in KEYWORDS:
        try:
            ds.get(keyword)
        except Exception as exc:  # noqa: BLE001 - pydicom decodes on first access; any failure there is the data's
            raise InvalidInput("unparseable", f"cannot read {keyword}: {type(exc).__name__}") from None
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
    # A NUL (some senders pad text with it) cannot be kept in a PostgreSQL text column; the bytes
    # in the blob keep it, the index does not need it.
    return str(value).replace("\x00", "")[:limit]


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
    in for comparison (fhirai.routing.priors), which never opens a revision.

    The blob is written (and fsynced) in a helper thread while this one parses the header: the
    fsyncs wait on the disk, the parse on the CPU, and one C-STORE costs the longer of the two,
    not their sum. The row is committed only once the blob is durable (invariant 1). Input that
    turns out unparseable leaves its bytes in the raw area too (content-addressed, unreferenced)."""
    stored = _blob_writer().submit(blobs.put, raw, area="raw")
    try:
        ds = header_parse(raw)
        if connection.vendor == "postgresql":
            now = timezone.now()
            facts = _facts(
                ds, calling_ae=calling_ae, transfer_syntax_uid=transfer_syntax_uid, now=now, role=role
            )
    finally:
        # never return (or refuse) while the blob write is still running
        wait([stored])
    key = stored.result()
    try:
        if connection.vendor == "postgresql":
            return _instance_commit_postgresql(
                *facts, key=key, raw_size=len(raw), calling_ae=calling_ae, now=now
            )
        return _instance_commit(
            ds,
            raw_size=len(raw),
            key=key,
            calling_ae=calling_ae,
            transfer_syntax_uid=transfer_syntax_uid,
            role=role,
        )
    except DatabaseError as exc:
        # A listener keeps its connection across items (a DICOM association may carry thousands):
        # drop a broken one now, so the next item reconnects once the database is back instead of
        # failing on the dead connection for the rest of the association (the fault suite's find).
        if not connection.in_atomic_block:
            connection.close()
        raise Unavailable(f"database: {type(exc).__name__}") from exc


@functools.cache
def _blob_writer() -> ThreadPoolExecutor:
    """The threads that write blobs beside the header parse (one per C-STORE in flight)."""
    return ThreadPoolExecutor(max_workers=32, thread_name_prefix="blob-put")


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


def _instance_values(
    ds: Dataset, *, raw_size: int, key: str, calling_ae: str, transfer_syntax_uid: str, now: object
) -> dict[str, object]:
    tsuid = transfer_syntax_uid or str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "") or "")
    return {
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "sop_class_uid": str(ds.SOPClassUID),
        "series_uid": str(ds.SeriesInstanceUID),
        "modality": _text(ds, "Modality", 16),
        "instance_number": _instance_number(ds),
        "image_type": _text(ds, "ImageType", 128),
        "plane": _plane(ds),
        "series_description": _text(ds, "SeriesDescription", 64),
        "transfer_syntax_uid": tsuid[:64],
        "blob_key": key,
        "size": raw_size,
        "received_at": now,
        "calling_ae": calling_ae[:16],
        "deid_blob_key": "",
    }


# Parameter types for the PostgreSQL statements, by Django field type: server-side binding sends
# a None or a str as "unknown", which PostgreSQL cannot place in an INSERT ... SELECT list.
_PG_TYPES = {
    "CharField": "text",
    "TextField": "text",
    "DateTimeField": "timestamptz",
    "IntegerField": "integer",
    "PositiveIntegerField": "integer",
    "PositiveBigIntegerField": "bigint",
    "BigIntegerField": "bigint",
}
_INSTANCE_COLUMNS = (
    "sop_instance_uid",
    "sop_class_uid",
    "series_uid",
    "modality",
    "instance_number",
    "image_type",
    "plane",
    "series_description",
    "transfer_syntax_uid",
    "blob_key",
    "size",
    "received_at",
    "calling_ae",
    "deid_blob_key",
)


@functools.cache
def _pg_statements() -> tuple[str, str, tuple[str, ...]]:
    """The two statements of _instance_commit_postgresql and the study columns the first one
    sets, built once per process (table names from the models)."""
    quote = connection.ops.quote_name

    def mark(model: type[models.Model], column: str) -> str:
        return f"%s::{_PG_TYPES[model._meta.get_field(column).get_internal_type()]}"

    study_columns = tuple(f.column for f in Study._meta.concrete_fields if not f.primary_key)
    study, instance = quote(Study._meta.db_table), quote(Instance._meta.db_table)
    timeline = quote(TimelineEvent._meta.db_table)
    study_insert = (
        f"INSERT INTO {study} ({', '.join(quote(c) for c in study_columns)}) "  # nosec B608  # quoted table/column names from the models; values are bound parameters
        f"SELECT {', '.join(mark(Study, c) for c in study_columns)} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {study} WHERE study_uid = %s::text) "
        "ON CONFLICT (study_uid) DO NOTHING"
    )
    instance_insert = (
        f"WITH s AS (SELECT id, state, revision, instance_count, role FROM {study} "  # nosec B608  # quoted table/column names from the models; values are bound parameters
        "WHERE study_uid = %(study_uid)s::text FOR UPDATE), "
        f"i AS (INSERT INTO {instance} (study_id, revision, {', '.join(quote(c) for c in _INSTANCE_COLUMNS)}) "
        "SELECT s.id, CASE WHEN s.state = %(receiving)s::text OR s.role = 'prior' THEN s.revision "
        "ELSE s.revision + 1 END, "
        f"{', '.join(mark(Instance, c).replace('%s', f'%({c})s') for c in _INSTANCE_COLUMNS)} FROM s "
        "ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id, study_id, revision), "
        f"u AS (UPDATE {study} AS st SET instance_count = st.instance_count + 1, "
        "last_received_at = %(now)s::timestamptz, "
        "modalities = CASE WHEN %(modality)s::text = '' "
        "OR %(modality)s::text = ANY(string_to_array(st.modalities, ',')) THEN st.modalities "
        "WHEN st.modalities = '' THEN %(modality)s::text ELSE st.modalities || ',' || %(modality)s::text END, "
        # a prior study (kept for comparison) stays where it is: it has no revisions
        "state = CASE WHEN st.role = 'prior' THEN st.state ELSE %(receiving)s::text END, "
        "state_changed_at = CASE WHEN st.state = %(receiving)s::text OR st.role = 'prior' "
        "THEN st.state_changed_at ELSE %(now)s::timestamptz END, "
        "error = CASE WHEN st.state = %(receiving)s::text OR st.role = 'prior' THEN st.error ELSE '' END, "
        "revision = i.revision "
        "FROM i WHERE st.id = i.study_id), "
        f"t AS (INSERT INTO {timeline} (item_kind, item_id, event, at, detail, error) "
        "SELECT 'study', s.id, e.event, %(now)s::timestamptz, e.detail, '' FROM s, i, (VALUES "
        "(1, %(received)s::text, %(first_detail)s::text, false), "
        "(2, %(acked)s::text, %(acked_detail)s::text, false), "
        "(3, %(received)s::text, %(late_detail)s::text, true)) AS e(n, event, detail, late) "
        "WHERE (NOT e.late AND s.instance_count = 0) "
        "OR (e.late AND s.state <> %(receiving)s::text AND s.role <> 'prior') "
        "ORDER BY e.n) "
        "SELECT s.id, i.id FROM s LEFT JOIN i ON true"
    )
    return study_insert, instance_insert, study_columns


def _facts(
    ds: Dataset, *, calling_ae: str, transfer_syntax_uid: str, now: object, role: str = "clinical"
) -> tuple[dict[str, object], dict[str, object]]:
    """The study row (for a new study) and the instance's columns but its blob key and size,
    from the header."""
    study_row = {
        **_study_defaults(ds, now=now, calling_ae=calling_ae),
        "study_uid": str(ds.StudyInstanceUID),
        "state": StudyState.RECEIVING.value,
        "revision": 1,
        "error": "",
        "instance_count": 0,
        "role": role,
        "raw_purged_at": None,
        "deid_purged_at": None,
    }
    values = _instance_values(
        ds, raw_size=0, key="", calling_ae=calling_ae, transfer_syntax_uid=transfer_syntax_uid, now=now
    )
    return study_row, values


def _instance_commit_postgresql(
    study_row: dict[str, object],
    values: dict[str, object],
    *,
    key: str,
    raw_size: int,
    calling_ae: str,
    now: object,
) -> Received:
    """_instance_commit in one round trip (PostgreSQL): two prepared statements sent in one
    pipeline. Without a transaction of the caller's, PostgreSQL runs the statements before the
    pipeline's Sync as one implicit transaction (PS "Pipelining", extended query protocol), so
    they commit together or not at all. Per C-STORE this is throughput: the ORM version costs
    BEGIN, four statements and COMMIT, each a round trip, and the ORM's CPU.

    1. the study is inserted unless it exists (its first instance's header facts);
    2. one statement locks the study row (FOR UPDATE: concurrent instances of a study take turns),
       inserts the instance (ON CONFLICT DO NOTHING: a resend is refused by the unique
       SOPInstanceUID), and only when that inserted a row counts it in the study, opens a revision
       when the study had left receiving, and writes the timeline events: received and acked for
       the study's first instance, received for an instance arriving after completion."""
    study_insert, instance_insert, study_columns = _pg_statements()
    study_uid = str(study_row["study_uid"])
    receiving = StudyState.RECEIVING.value
    values = {**values, "blob_key": key, "size": raw_size}
    params = {
        **values,
        "study_uid": study_uid,
        "receiving": receiving,
        "now": now,
        "received": Event.RECEIVED.value,
        "acked": Event.ACKED.value,
        "first_detail": f"first instance from AE {calling_ae or '?'}",
        "acked_detail": "committed; C-STORE Success returned",
        "late_detail": "new instance after completion: revision opened",
    }
    connection.ensure_connection()
    pg = connection.connection
    with connection.wrap_database_errors:
        with pg.pipeline():
            pg.cursor().execute(
                study_insert, [*(study_row[c] for c in study_columns), study_uid], prepare=True
            )
            cursor = pg.cursor()
            cursor.execute(instance_insert, params, prepare=True)
        row = cursor.fetchone()
    if row is None:  # the study row went away between the two statements: let the sender retry
        raise DatabaseError("study row missing after its insert")
    study_id, instance_id = row
    if instance_id is None:
        existing = Instance.objects.only("id", "study_id").get(sop_instance_uid=values["sop_instance_uid"])
        return Received(instance_id=existing.id, study_id=existing.study_id, duplicate=True)
    return Received(instance_id=int(instance_id), study_id=int(study_id), duplicate=False)


def _instance_insert(**values: object) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id (PostgreSQL, SQLite >= 3.35): the unique
    SOPInstanceUID refuses a resend in one round trip, without a savepoint; None for a duplicate.
    This runs once per C-STORE, where each round trip is throughput."""
    table = Instance._meta.db_table
    columns = ", ".join(connection.ops.quote_name(name) for name in values)
    marks = ", ".join(["%s"] * len(values))
    sql = (
        f"INSERT INTO {connection.ops.quote_name(table)} ({columns}) VALUES ({marks}) "  # nosec B608  # quoted table/column names from the models; values are bound parameters
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
