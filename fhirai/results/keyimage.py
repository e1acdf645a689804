"""The result as a key image for the PACS: the image the model's finding was seen on (or the
middle image it read), windowed, with the result drawn on it and "NOT FOR DIAGNOSTIC USE" burned in,
as a Secondary Capture Image (PS3.3 A.8.1, built with highdicom) in the original study under the
original patient, in its own series. Its UIDs derive from the study, model and revision, so a
rebuild replaces the same object, as the SR's do."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from fhirai.results.sr import _uid

WARNING = "NOT FOR DIAGNOSTIC USE"
SIZE = 512
SERIES_NUMBER = 991


def _lines(result: dict[str, Any], model: Any, status: str) -> list[str]:
    outputs = model.outputs or {}
    specs = outputs.get("measurements", outputs)
    lines = [f"AI result, {status}: {model.title} {model.version}"]
    for item in result.get("measurements") or []:
        spec = specs.get(str(item.get("name")), {}) if isinstance(specs, dict) else {}
        label = (spec.get("coding") or {}).get("display") or item.get("name")
        decimals = int(spec.get("decimals", 2)) if isinstance(spec, dict) else 2
        lines.append(f"{label}: {float(item['value']):.{decimals}f} {spec.get('unit', '')}".rstrip())
    for finding in result.get("findings") or []:
        state = "present" if finding.get("present") else "absent"
        lines.append(
            f"{finding.get('name', 'finding')}: {state} (p={float(finding.get('probability', 0)):.2f})"
        )
    return lines[:8]


def _canvas(png: bytes) -> Image.Image:
    picture = Image.open(BytesIO(png)).convert("RGB")
    canvas = Image.new("RGB", (SIZE, SIZE), "black")
    scale = min(SIZE / picture.width, (SIZE - 120) / picture.height)  # up or down, to fill the box
    picture = picture.resize(
        (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
        Image.Resampling.LANCZOS,
    )
    canvas.paste(picture, ((SIZE - picture.width) // 2, 40))
    return canvas


def _orientation(source: Dataset) -> tuple[str, str]:
    """Patient Orientation (PS3.3 C.7.6.1.1.1) of the rendered image: the direction of its rows and
    columns, from Image Orientation (Patient) by each cosine's dominant axis (the image is scaled,
    never turned); an axial slice (L, P) when the source does not say."""
    iop = [float(v) for v in (source.get("ImageOrientationPatient") or [])]
    if len(iop) != 6:
        return ("L", "P")

    def letter(vector: list[float]) -> str:
        axis = max(range(3), key=lambda i: abs(vector[i]))
        return ("L", "P", "H")[axis] if vector[axis] > 0 else ("R", "A", "F")[axis]

    return (letter(iop[:3]), letter(iop[3:]))


def key_image_build(
    *, source: Dataset, png: bytes, result: dict[str, Any], model: Any, instance_number: int, status: str
) -> Dataset:
    """The key image from `source` (the identified image, header and pixels) rendered as `png`."""
    canvas = _canvas(png)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=18)
    small = ImageFont.load_default(size=14)
    draw.rectangle((0, 0, SIZE, 32), fill=(160, 0, 0))
    draw.text((SIZE // 2, 16), WARNING, fill="white", font=font, anchor="mm")
    y = SIZE - 78
    for line in _lines(result, model, status):
        draw.text((8, y), line, fill=(255, 220, 0), font=small)
        y += 16
        if y > SIZE - 12:
            break
    study_uid = str(source.StudyInstanceUID)
    header = Dataset({e.tag: e for e in source if e.tag < 0x7FE00010})
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=np.asarray(canvas, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=_orientation(source),
        series_instance_uid=_uid("key-image-series", study_uid, model.name, model.version),
        series_number=SERIES_NUMBER,
        sop_instance_uid=_uid("key-image", study_uid, model.name, model.version, str(instance_number)),
        instance_number=instance_number,
        manufacturer="fhirai",
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if "Laterality" not in image:  # General Series Type 2C: present (empty unless the source says)
        image.Laterality = str(source.get("Laterality", "") or "")
    image.BurnedInAnnotation = "YES"
    image.SeriesDescription = f"AI key image {model.name} (not for diagnostic use)"[:64]
    image.ImageComments = f"{WARNING}. {' / '.join(_lines(result, model, status))}"[:10240]
    image.DerivationDescription = f"rendered by fhirai from {source.SOPInstanceUID}"[:1024]
    return image


def key_image_bytes(image: Dataset) -> bytes:
    out = BytesIO()
    image.save_as(out, enforce_file_format=True)
    return out.getvalue()
