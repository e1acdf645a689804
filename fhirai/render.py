"""Images rendered from pixel data, in memory only: the console's preview of a study (the image as
received beside the de-identified copy, burned-in text painted over or not), WADO-RS "rendered",
and the key image of a result (fhirai.results.keyimage). Shown as the modality meant it to be
seen: Modality LUT, then the first VOI window (or VOI LUT, else the image's own range), MONOCHROME1
inverted, colour as RGB (PS3.3 C.7.6.3, C.11.1, C.11.2).
"""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.uid import UID

from fhirai import blobs
from fhirai.errors import FhiraiError, NotFound
from fhirai.quiet import pydicom_quiet

if TYPE_CHECKING:
    from fhirai.ingest.models import Instance, Study

# SOP classes that carry no image to preview (PS3.4 B.5): structured reports and key objects,
# presentation states, encapsulated documents, waveforms, raw data, spatial registration and
# fiducials, RT structure sets, plans and treatment records, spectroscopy.
_NOT_IMAGES = (
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.11.",
    "1.2.840.10008.5.1.4.1.1.104.",
    "1.2.840.10008.5.1.4.1.1.9.",
    "1.2.840.10008.5.1.4.1.1.66",
    "1.2.840.10008.5.1.4.1.1.481.3",
    "1.2.840.10008.5.1.4.1.1.481.4",
    "1.2.840.10008.5.1.4.1.1.481.5",
    "1.2.840.10008.5.1.4.1.1.481.6",
    "1.2.840.10008.5.1.4.1.1.481.7",
    "1.2.840.10008.5.1.4.1.1.481.8",
    "1.2.840.10008.5.1.4.1.1.481.9",
    "1.2.840.10008.5.1.4.1.1.4.2",
)
_IMAGE_EXCEPTIONS = ("1.2.840.10008.5.1.4.1.1.66.4",)  # Segmentation: a labelled image


class PreviewUnavailable(NotFound):
    """No preview can be made: no image in the study, no de-identified copy yet, or pixel data
    in a transfer syntax no installed decoder reads."""


def _is_image(sop_class_uid: str) -> bool:
    if sop_class_uid.startswith(_IMAGE_EXCEPTIONS):
        return True
    return not any(
        sop_class_uid == p.rstrip(".") or sop_class_uid.startswith(p if p.endswith(".") else p + ".")
        for p in _NOT_IMAGES
    )


def study_preview_instance(study: Study) -> Instance | None:
    """The representative image: in the image series with most instances, the middle one by
    InstanceNumber (from its header; SOPInstanceUID order where that is missing)."""
    instances = [i for i in study.instances.order_by("id") if _is_image(i.sop_class_uid)]
    if not instances:
        return None
    counts: dict[str, int] = {}
    for instance in instances:
        counts[instance.series_uid] = counts.get(instance.series_uid, 0) + 1
    series = max(counts, key=lambda uid: counts[uid])  # ties: the series received first
    members = [i for i in instances if i.series_uid == series]
    # The column (filled at receive); the header only for instances received before it existed.
    numbers = {
        i.pk: i.instance_number if i.instance_number is not None else _instance_number(i) for i in members
    }
    members.sort(key=lambda i: (numbers[i.pk] is None, numbers[i.pk] or 0, i.sop_instance_uid))
    return members[len(members) // 2]


def _instance_number(instance: Instance) -> int | None:
    """InstanceNumber from the stored header (instances received before the column existed)."""
    try:
        with pydicom_quiet():
            header = dcmread(
                BytesIO(blobs.get(instance.blob_key)),
                stop_before_pixels=True,
                specific_tags=["InstanceNumber"],
                force=True,
            )
        number = header.get("InstanceNumber")
        return int(number) if number not in (None, "") else None
    except (ValueError, TypeError, AttributeError, EOFError, OSError, FhiraiError):
        return None


def instance_preview_png(instance: Instance, *, deidentified: bool, size: int = 512) -> bytes:
    """The instance's image (the middle frame of a multi-frame one) as a PNG of at most `size`
    pixels a side, from the raw blob or the de-identified copy."""
    from fhirai.routing.rules import WITHHELD

    key = instance.blob_key
    if deidentified:
        if not instance.deid_blob_key:
            raise PreviewUnavailable(f"instance {instance.pk} has no de-identified copy yet")
        if instance.deid_blob_key == WITHHELD:
            raise PreviewUnavailable(
                f"instance {instance.pk} was withheld from de-identification (burned-in text risk)"
            )
        key = instance.deid_blob_key
    with pydicom_quiet():  # pydicom's value warnings quote values (PHI)
        ds = dcmread(BytesIO(blobs.get(key)), force=True)
    return dataset_preview_png(ds, size=size)


def study_preview_png(study: Study, *, deidentified: bool, size: int = 512) -> bytes:
    """The preview of the study's representative image (study_preview_instance)."""
    instance = study_preview_instance(study)
    if instance is None:
        raise PreviewUnavailable(f"study {study.pk} has no image instance")
    return instance_preview_png(instance, deidentified=deidentified, size=size)


def dataset_preview_png(ds: Dataset, *, size: int = 512) -> bytes:
    """A dataset's image rendered for display as a PNG of at most `size` pixels a side."""
    with pydicom_quiet():
        return _render(ds, size)


def _render(ds: Dataset, size: int) -> bytes:
    if size < 1:
        raise ValueError("preview size must be positive")
    if "PixelData" not in ds:
        raise PreviewUnavailable("the instance has no pixel data")
    frames = _int(ds.get("NumberOfFrames"), 1)
    index = max(frames, 1) // 2
    try:
        arr = pixel_array(ds, index=index) if frames > 1 else pixel_array(ds)
    except Exception as exc:  # noqa: BLE001 - every decoder failure means the same to the operator
        raise PreviewUnavailable(_undecodable(ds, exc)) from None
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "PALETTE COLOR" or (_int(ds.get("SamplesPerPixel"), 1) > 1 and arr.ndim == 3):
        image = _colour(arr, ds, photometric)
    else:
        while arr.ndim > 2:  # a decoder that returned every frame, or a stray sample axis
            arr = arr[arr.shape[0] // 2]
        image = _grey(arr, ds, index)
        if photometric == "MONOCHROME1":
            image = 255 - image
    picture = Image.fromarray(np.ascontiguousarray(image))
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = BytesIO()
    picture.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _undecodable(ds: Dataset, exc: Exception) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = UID(str(meta.get("TransferSyntaxUID", "") if meta is not None else "") or "")
    label = f"{syntax.name} ({syntax})" if syntax else "an unknown transfer syntax"
    return f"cannot decode pixel data in {label}: {type(exc).__name__}: {str(exc)[:200]}"


def _int(value: Any, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _first(value: Any) -> float | None:
    """The first of a possibly multi-valued DS, as a float."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _frame_attr(ds: Dataset, index: int, sequence: str, keyword: str) -> Any:
    """An attribute at the top level, else in the frame's functional groups (enhanced objects)."""
    if keyword in ds:
        return ds.get(keyword)
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        try:
            items = ds.get(groups)
            if not items:
                continue
            item = items[index] if groups.startswith("PerFrame") and index < len(items) else items[0]
            inner = item.get(sequence)
            if inner and keyword in inner[0]:
                return inner[0].get(keyword)
        except (AttributeError, IndexError, KeyError, TypeError):
            continue
    return None


def _grey(arr: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    """Stored values -> Modality LUT -> VOI -> 8 bits (PS3.3 C.11.1, C.11.2.1.2)."""
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    else:
        slope = _first(_frame_attr(ds, index, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _first(_frame_attr(ds, index, "PixelValueTransformationSequence", "RescaleIntercept"))
        values = arr.astype(np.float64) * (1.0 if slope is None else slope) + (intercept or 0.0)
    center = _first(_frame_attr(ds, index, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_frame_attr(ds, index, "FrameVOILUTSequence", "WindowWidth"))
    if center is not None and width is not None and width >= 1:
        function = str(_frame_attr(ds, index, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR").upper()
        if function == "LINEAR_EXACT":
            low, span = center - width / 2, width
        else:  # LINEAR (SIGMOID is drawn linearly: close enough for a preview)
            low, span = center - 0.5 - (width - 1) / 2, max(width - 1, 1e-9)
        return (np.clip((values - low) / span, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    mapped = _voi_lut(values, ds)
    return _stretch(values) if mapped is None else mapped


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The first VOI LUT (PS3.3 C.11.2.1.1): values below the first mapped one take the first
    entry, above the last the last; output scaled from the LUT's bit depth. None if malformed."""
    try:
        item = ds.VOILUTSequence[0]
        count, first, bits = (int(v) for v in item.LUTDescriptor)
        data = item.LUTData
        # OW LUT Data holds one 16-bit word per entry whatever the bit depth.
        table = np.frombuffer(data, dtype="<u2") if isinstance(data, bytes) else np.asarray(data, dtype=float)
        count = count or 65536
        if first >= 32768 and int(ds.get("PixelRepresentation", 0) or 0) == 1:
            first -= 65536  # the first mapped value is signed when the pixels are (C.11.2.1.1)
        table = table[:count].astype(np.float64)
        if not table.size:
            return None
        index = np.clip(np.rint(values) - first, 0, table.size - 1).astype(np.int64)
        top = float(2 ** max(1, min(bits, 16)) - 1)
        return (np.clip(table[index] / top, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return ((values - low) / (high - low) * 255 + 0.5).astype(np.uint8)


def _colour(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """RGB for display: palettes applied, YBR already converted by the decoder, >8 bits scaled."""
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr
    if photometric == "PALETTE COLOR":
        bits = 16 if arr.max() > 255 else 8
    else:
        bits = _int(ds.get("BitsStored"), arr.dtype.itemsize * 8)
    top = float(2**bits - 1)
    return (np.clip(arr.astype(np.float64) / top, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
