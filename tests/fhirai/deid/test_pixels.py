"""Burned-in text: an ultrasound frame with the patient's name and MRN drawn into its pixels is
withheld under the Basic profile, and cleaned by OCR under clean-pixel-data."""

from __future__ import annotations

import shutil
from io import BytesIO

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fhirai.deid.pixels import Withheld
from fhirai.deid.profile import DeidProfile, dataset_deidentify


def ultrasound() -> tuple[bytes, np.ndarray]:
    img = Image.new("L", (512, 384), 0)
    draw = ImageDraw.Draw(img)
    draw.ellipse((100, 80, 400, 330), fill=90)
    font = ImageFont.load_default(size=22)
    draw.text((10, 10), "ZYXQUAL BRUNHILD  MRN 7734921", fill=255, font=font)
    draw.text((10, 350), "03-NOV-1947  SAINT EXAMPLE", fill=255, font=font)
    pixels = np.array(img)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "US", "Zyxqual^Brunhild", "MRN-7734921"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), pixels


def test_an_at_risk_instance_is_withheld_without_the_option():
    raw, _ = ultrasound()
    with pytest.raises(Withheld):
        dataset_deidentify(raw, profile=DeidProfile())


@pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="needs Debian's tesseract-ocr (.ci/run installs it)"
)
def test_clean_pixel_data_paints_over_the_text_and_keeps_the_anatomy():
    import pytesseract

    raw, before = ultrasound()
    out, _ = dataset_deidentify(raw, profile=DeidProfile(options=frozenset({"clean-pixel-data"})))
    ds = dcmread(BytesIO(out))
    after = ds.pixel_array
    assert after[200, 250] == before[200, 250] == 90  # the anatomy is untouched
    text = pytesseract.image_to_string(Image.fromarray(after)).upper()
    for leaked in ("ZYXQUAL", "BRUNHILD", "7734921", "1947", "SAINT"):
        assert leaked not in text, text
    assert ds.BurnedInAnnotation == "NO" and "113101" in [
        c.CodeValue for c in ds.DeidentificationMethodCodeSequence
    ]
