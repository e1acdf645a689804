"""DICOMweb (PS3.18) over what fhirai holds.

- STOW-RS `POST /dicomweb/studies[/{study}]`: multipart/related; type="application/dicom". Each part
  goes through the same durable receive as a C-STORE (fhirai.ingest.receive.instance_receive), and
  the answer is the Store Instances Response (PS3.18 10.5.3, application/dicom+json): a
  ReferencedSOPSequence of what was kept and a FailedSOPSequence with a FailureReason per refused
  part. HTTP 200 when all were kept, 202 when some were refused, 409 when none was, 503 (with
  Retry-After) when storage could take none of them now, 415 for another media type.
- QIDO-RS `GET /dicomweb/studies`, `.../series`, `.../instances` with the usual matching keys.
- WADO-RS: a study, series or instance as multipart/related application/dicom (the bytes as
  received), `.../metadata` as application/dicom+json (bulk data left out), and an instance's
  `.../rendered` image as PNG (windowed, from the stored pixel data).

Authentication is that of the API (fhirai.api.auth: with FHIRAI_REQUIRE_TOKENS on, a Bearer
token is needed). Searching and retrieving return identified data: a caller with a role must be
admin or operator, and every such read is recorded in the access audit."""

from __future__ import annotations

import json
import logging
from io import BytesIO
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from pydicom import dcmread
from pydicom.dataset import Dataset

from fhirai import blobs
from fhirai import errors as domain
from fhirai.api.access import access_record
from fhirai.api.auth import PHI_ROLES, Principal, principal_of
from fhirai.ingest import catalog
from fhirai.ingest.models import Instance, Study
from fhirai.ingest.receive import input_reject, instance_receive
from integrations.dicom.status import KEPT_CODES, WARNING_KEPT
from integrations.dicomweb.multipart import MultipartError, Part, media_type, parts_build, parts_split

log = logging.getLogger(__name__)
DICOM_JSON = "application/dicom+json"
CALLING_AE = "STOW-RS"  # how STOW-RS senders show as a source (DICOM's calling AE column)
RETRY_AFTER = "30"

# PS3.18 Table 10.5.3-1 / PS3.4 C-STORE failure statuses, as FailureReason (0008,1197).
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # the instance is not of the study the request names
CANNOT_UNDERSTAND = 0xC000
NOT_DICOM = 0xC122  # a part of another media type


def _error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _reader(request: HttpRequest) -> Principal | HttpResponse:
    """Who reads: an admin or operator (or anyone when tokens are not required and none was sent)."""
    principal = principal_of(request)
    if principal is None:
        return Principal(
            name=f"anonymous@{request.META.get('REMOTE_ADDR', '?')}", role="anonymous", via="none"
        )
    if principal.role not in PHI_ROLES:
        return _error(403, f"the {principal.role} role may not read identified images (admin or operator)")
    return principal


def _base(request: HttpRequest) -> str:
    return f"{settings.FHIRAI_BASE_URL}/dicomweb"


# --- dicom+json ------------------------------------------------------------------------------------
def _el(vr: str, *values: Any) -> dict[str, Any]:
    values_ = [v for v in values if v not in (None, "")]
    return {"vr": vr, "Value": values_} if values_ else {"vr": vr}


def _pn(name: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]} if name else {"vr": "PN"}


def _study_json(study: Study, base: str) -> dict[str, Any]:
    return {
        "00080020": _el("DA", study.study_date),
        "00080030": _el("TM", study.study_time),
        "00080050": _el("SH", study.accession_number),
        "00080061": _el("CS", *[m for m in study.modalities.split(",") if m]),
        "00081030": _el("LO", study.study_description),
        "00081190": _el("UR", f"{base}/studies/{study.study_uid}"),
        "00100010": _pn(study.patient_name),
        "00100020": _el("LO", study.patient_id),
        "00100021": _el("LO", study.issuer_of_patient_id),
        "00100030": _el("DA", study.patient_birth_date),
        "00100040": _el("CS", study.patient_sex),
        "0020000D": _el("UI", study.study_uid),
        "00201206": _el("IS", getattr(study, "series_count", None)),
        "00201208": _el("IS", getattr(study, "instances_total", study.instance_count)),
    }


def _json(body: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(json.dumps(body), status=status, content_type=DICOM_JSON)


def _int(value: str, default: int, *, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(value)))
    except (TypeError, ValueError):
        return default


# --- STOW-RS and QIDO-RS on /studies -----------------------------------------------------------------
@csrf_exempt
def studies(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _stow(request, target_study="")
    if request.method in ("GET", "HEAD"):
        return _qido_studies(request)
    return _error(405, "GET (QIDO-RS) or POST (STOW-RS)", Allow="GET, POST")


@csrf_exempt
def study(request: HttpRequest, study: str) -> HttpResponse:
    if request.method == "POST":
        return _stow(request, target_study=study)
    if request.method in ("GET", "HEAD"):
        return _retrieve(request, study)
    return _error(405, "GET (WADO-RS) or POST (STOW-RS)", Allow="GET, POST")


def _stow(request: HttpRequest, *, target_study: str) -> HttpResponse:
    media, params = media_type(request.META.get("CONTENT_TYPE", ""))
    if media != "multipart/related":
        return _error(415, 'send multipart/related; type="application/dicom"')
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        return _error(415, f"only application/dicom parts are accepted, not {part_type}")
    body = _body(request)
    if body is None:
        return _error(
            413,
            f"a STOW-RS request holds at most {settings.FHIRAI_STOW_MAX_BYTES} bytes (FHIRAI_STOW_MAX_BYTES); send the study in several requests",
        )
    try:
        parts = parts_split(body, params.get("boundary", ""))
    except MultipartError as exc:
        return _error(400, str(exc))
    peer = f"stow@{request.META.get('REMOTE_ADDR', '?')}"
    kept: list[Dataset] = []
    failed: list[Dataset] = []
    unavailable = warned = 0
    for part in parts:
        reason, ds = _stow_one(part, target_study, peer)
        if reason is None or reason == WARNING_KEPT:
            if reason == WARNING_KEPT:
                ds.WarningReason = WARNING_KEPT
                warned += 1
            kept.append(ds)
        else:
            failed.append(_failed_item(ds, reason))
            unavailable += reason == OUT_OF_RESOURCES
    response = Dataset()
    if target_study:
        response.RetrieveURL = f"{_base(request)}/studies/{target_study}"
    if kept:
        response.ReferencedSOPSequence = kept
    if failed:
        response.FailedSOPSequence = failed
    body = response.to_json_dict()
    if not kept and failed and unavailable == len(failed):
        answer = _json(body, 503)
        answer["Retry-After"] = RETRY_AFTER
        return answer
    return _json(body, 200 if not failed and not warned else 202 if kept else 409)


def _body(request: HttpRequest) -> bytes | None:
    """The request body up to FHIRAI_STOW_MAX_BYTES (a whole study in one request is the usual
    STOW-RS; Django's own 2.5 MB limit for form posts does not fit it); None when larger."""
    limit = settings.FHIRAI_STOW_MAX_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    chunks, size = [], 0
    while True:
        chunk = request.read(1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def _stow_one(part: Part, target_study: str, peer: str) -> tuple[int | None, Dataset]:
    """(None, referenced item) when kept; (FailureReason, what is known of it) when refused."""
    item = Dataset()
    media = part.content_type.split(";", 1)[0].strip().lower()
    if media and media != "application/dicom":
        _keep(part.data, peer, "not-dicom", f"a part of type {media} in a STOW-RS request")
        return NOT_DICOM, item
    try:
        header = dcmread(BytesIO(part.data), stop_before_pixels=True, force=False)
        item.ReferencedSOPClassUID = str(header.get("SOPClassUID", "") or "")
        item.ReferencedSOPInstanceUID = str(header.get("SOPInstanceUID", "") or "")
        study_uid = str(header.get("StudyInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - anything unreadable is "cannot understand", and kept
        _keep(part.data, peer, "unparseable", "a STOW-RS part that is not a DICOM file")
        return CANNOT_UNDERSTAND, item
    if target_study and study_uid != target_study:
        _keep(part.data, peer, "study-mismatch", "a STOW-RS instance of another study than the request's")
        return DOES_NOT_MATCH, item
    try:
        instance_receive(raw=part.data, calling_ae=CALLING_AE)
    except domain.InvalidInput as exc:
        if not _keep(part.data, peer, exc.code, exc.detail):
            return OUT_OF_RESOURCES, item
        # A dataset fhirai keeps but cannot process (a UID missing or malformed): stored, with a
        # warning (B007), as a C-STORE of it is answered.
        return (WARNING_KEPT if exc.code in KEPT_CODES else CANNOT_UNDERSTAND), item
    except domain.Unavailable:
        return OUT_OF_RESOURCES, item
    except Exception:  # noqa: BLE001 - never a false success
        log.exception("a STOW-RS instance could not be stored")
        return OUT_OF_RESOURCES, item
    series = str(header.get("SeriesInstanceUID", "") or "")
    item.RetrieveURL = (
        f"{settings.FHIRAI_BASE_URL}/dicomweb/studies/{study_uid}/series/{series}/instances/"
        f"{item.ReferencedSOPInstanceUID}"
    )
    return None, item


def _failed_item(item: Dataset, reason: int) -> Dataset:
    item.FailureReason = reason
    return item


def _keep(raw: bytes, peer: str, code: str, detail: str) -> bool:
    try:
        input_reject(protocol="dicomweb", raw=raw, peer=peer, code=code[:64], detail=detail)
    except Exception:  # noqa: BLE001 - the refusal is answered even when it cannot be kept
        log.exception("could not keep a refused STOW-RS part")
        return False
    return True


def _qido_studies(request: HttpRequest) -> HttpResponse:
    reader = _reader(request)
    if isinstance(reader, HttpResponse):
        return reader
    g = request.GET
    query = catalog.StudyQuery(
        study_uid=g.get("StudyInstanceUID", g.get("0020000D", "")),
        patient_id=g.get("PatientID", g.get("00100020", "")),
        patient_name=g.get("PatientName", g.get("00100010", "")),
        accession=g.get("AccessionNumber", g.get("00080050", "")),
        study_date=g.get("StudyDate", g.get("00080020", "")),
        modality=g.get("ModalitiesInStudy", g.get("00080061", "")),
    )
    if any("\x00" in v for v in vars(query).values()):
        return _json([])
    try:
        rows = list(
            catalog.studies_find(
                query,
                limit=_int(g.get("limit", ""), 100, low=1, high=catalog.MAX_RESULTS),
                offset=_int(g.get("offset", ""), 0, low=0, high=10**9),
            )
        )
    except ValueError as exc:
        return _error(400, str(exc))
    _audit(reader, "dicomweb.search", [s.pk for s in rows])
    base = _base(request)
    return _json([_study_json(s, base) for s in rows]) if rows else HttpResponse(status=204)


def _audit(reader: Principal, action: str, ids: list[int]) -> None:
    if ids:
        access_record(reader, action, kind="study", ids=ids, detail="DICOMweb")


def _study_read(request: HttpRequest, study_uid: str) -> tuple[Principal, Study] | HttpResponse:
    """The reader (admin or operator) and the study, or the answer that refuses the read."""
    reader = _reader(request)
    if isinstance(reader, HttpResponse):
        return reader
    study = catalog.study_get(study_uid)
    return (reader, study) if study is not None else _error(404, "no such study here")


def series_search(request: HttpRequest, study: str) -> HttpResponse:
    read = _study_read(request, study)
    if isinstance(read, HttpResponse):
        return read
    reader, found = read
    _audit(reader, "dicomweb.search", [found.pk])
    base = _base(request)
    return _json(
        [
            {
                "00080060": _el("CS", row["modality"]),
                "0020000D": _el("UI", found.study_uid),
                "0020000E": _el("UI", row["series_uid"]),
                "00201209": _el("IS", row["count"]),
                "00081190": _el("UR", f"{base}/studies/{found.study_uid}/series/{row['series_uid']}"),
            }
            for row in catalog.series_of(found)
        ]
    )


def instances_search(request: HttpRequest, study: str, series: str) -> HttpResponse:
    read = _study_read(request, study)
    if isinstance(read, HttpResponse):
        return read
    reader, found = read
    rows = list(catalog.instances_of(found, series))
    if not rows:
        return _error(404, "no such series here")
    _audit(reader, "dicomweb.search", [found.pk])
    base = _base(request)
    return _json(
        [
            {
                "00080016": _el("UI", i.sop_class_uid),
                "00080018": _el("UI", i.sop_instance_uid),
                "00080060": _el("CS", i.modality),
                "00020010": _el("UI", i.transfer_syntax_uid),
                "0020000D": _el("UI", found.study_uid),
                "0020000E": _el("UI", i.series_uid),
                "00200013": _el("IS", i.instance_number),
                "00081190": _el(
                    "UR",
                    f"{base}/studies/{found.study_uid}/series/{i.series_uid}/instances/{i.sop_instance_uid}",
                ),
            }
            for i in rows
        ]
    )


# --- WADO-RS -------------------------------------------------------------------------------------
def _instances(
    request: HttpRequest, study: str, series: str = "", sop: str = ""
) -> tuple[Principal, Study, list[Instance]] | HttpResponse:
    read = _study_read(request, study)
    if isinstance(read, HttpResponse):
        return read
    reader, found = read
    rows = list(catalog.instances_of(found, series, sop))
    if not rows:
        return _error(404, "nothing of that here")
    return reader, found, rows


def _accepts(request: HttpRequest, *offered: str) -> bool:
    accept = request.headers.get("Accept", "") or "*/*"
    wanted = [a.split(";", 1)[0].strip().lower() for a in accept.split(",")]
    return any(w in offered or w in ("*/*", "multipart/*") for w in wanted) or any(
        w.startswith("multipart/related") for w in wanted
    )


def _retrieve(request: HttpRequest, study: str, series: str = "", sop: str = "") -> HttpResponse:
    """The instances as received, as multipart/related; type="application/dicom"."""
    found = _instances(request, study, series, sop)
    if isinstance(found, HttpResponse):
        return found
    reader, study_row, rows = found
    if not _accepts(request, "application/dicom", "multipart/related"):
        return _error(406, 'this server answers multipart/related; type="application/dicom"')
    try:
        parts = [Part("application/dicom", blobs.get(i.blob_key)) for i in rows]
    except domain.NotFound:
        return _error(404, "an instance's stored bytes are gone (purged?)")
    except domain.Unavailable:
        return _error(503, "storage unavailable; retry later", Retry_After=RETRY_AFTER)
    access_record(
        reader, "dicomweb.retrieve", kind="study", ids=[study_row.pk], detail=f"{len(parts)} instance(s)"
    )
    body, boundary = parts_build(parts)
    response = HttpResponse(
        body, content_type=f'multipart/related; type="application/dicom"; boundary={boundary}'
    )
    return response


def series_retrieve(request: HttpRequest, study: str, series: str) -> HttpResponse:
    return _retrieve(request, study, series)


def instance_retrieve(request: HttpRequest, study: str, series: str, sop: str) -> HttpResponse:
    return _retrieve(request, study, series, sop)


def _metadata(request: HttpRequest, study: str, series: str = "", sop: str = "") -> HttpResponse:
    found = _instances(request, study, series, sop)
    if isinstance(found, HttpResponse):
        return found
    reader, study_row, rows = found
    out = []
    try:
        for i in rows[: catalog.MAX_RESULTS * 5]:
            ds = dcmread(BytesIO(blobs.get(i.blob_key)), stop_before_pixels=True)
            out.append(_without_bulk(ds).to_json_dict(bulk_data_threshold=2**31))
    except domain.Unavailable:
        return _error(503, "storage unavailable; retry later", Retry_After=RETRY_AFTER)
    except domain.NotFound:
        return _error(404, "an instance's stored bytes are gone (purged?)")
    access_record(
        reader, "dicomweb.metadata", kind="study", ids=[study_row.pk], detail=f"{len(out)} instance(s)"
    )
    return _json(out)


BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


def _without_bulk(ds: Dataset) -> Dataset:
    """Bulk data (pixels were not read; overlays, waveforms, large binaries) left out of the
    metadata, at every level: retrieve the instance for them."""
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value:
                _without_bulk(item)
        elif element.VR in BULK_VRS and len(element.value or b"") > 1024:
            del ds[element.tag]
    return ds


def study_metadata(request: HttpRequest, study: str) -> HttpResponse:
    return _metadata(request, study)


def series_metadata(request: HttpRequest, study: str, series: str) -> HttpResponse:
    return _metadata(request, study, series)


def instance_metadata(request: HttpRequest, study: str, series: str, sop: str) -> HttpResponse:
    return _metadata(request, study, series, sop)


def instance_frames(request: HttpRequest, study: str, series: str, sop: str, frames: str) -> HttpResponse:
    """WADO-RS frames (PS3.18 10.4.1.1.2): the listed frames (1-based, comma-separated) decoded to
    native pixel data, each an application/octet-stream part in the order asked. 404 for a frame
    the instance does not have; 406 unless octet-stream is acceptable; 409 with the reason when no
    installed decoder reads the instance's transfer syntax."""
    found = _instances(request, study, series, sop)
    if isinstance(found, HttpResponse):
        return found
    reader, study_row, rows = found
    if not _accepts(request, "application/octet-stream"):
        return _error(406, 'frames are answered as multipart/related; type="application/octet-stream"')
    try:
        numbers = [int(n) for n in frames.split(",")]
    except ValueError:
        return _error(400, "frames are 1-based numbers, comma-separated")
    try:
        ds = dcmread(BytesIO(blobs.get(rows[0].blob_key)))
    except domain.Unavailable:
        return _error(503, "storage unavailable; retry later", Retry_After=RETRY_AFTER)
    if "PixelData" not in ds:
        return _error(404, "the instance has no pixel data")
    count = int(ds.get("NumberOfFrames") or 1)
    if any(not 1 <= n <= count for n in numbers):
        return _error(404, f"the instance has frames 1 to {count}")
    from pydicom.pixels import pixel_array

    parts = []
    for n in numbers:
        try:
            frame = pixel_array(ds, index=n - 1) if count > 1 else pixel_array(ds)
        except Exception as exc:  # noqa: BLE001 - no decoder for this transfer syntax, said as such
            syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "?"))
            return _error(409, f"cannot decode frames in transfer syntax {syntax}: {type(exc).__name__}")
        parts.append(Part("application/octet-stream", frame.tobytes()))
    access_record(
        reader, "dicomweb.frames", kind="study", ids=[study_row.pk], detail=f"{len(parts)} frame(s)"
    )
    body, boundary = parts_build(parts)
    return HttpResponse(
        body, content_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    )


def instance_rendered(request: HttpRequest, study: str, series: str, sop: str) -> HttpResponse:
    """The instance's image (middle frame of a multi-frame one), windowed, as PNG."""
    found = _instances(request, study, series, sop)
    if isinstance(found, HttpResponse):
        return found
    reader, study_row, rows = found
    if not _accepts(request, "image/png", "image/*"):
        return _error(406, "rendered images are image/png")
    from fhirai.render import PreviewUnavailable, instance_preview_png

    size = _int(request.GET.get("viewport", "").split(",")[0], 512, low=16, high=2048)
    try:
        png = instance_preview_png(rows[0], deidentified=False, size=size)
    except PreviewUnavailable as exc:
        return _error(404, str(exc))
    access_record(reader, "dicomweb.rendered", kind="study", ids=[study_row.pk], detail="1 instance")
    return HttpResponse(png, content_type="image/png")
