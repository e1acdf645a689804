"""Synthetic CT chest phantoms with known truth, built in code (no patient data, ever).

Body: an elliptic cylinder of soft tissue (40 HU) on a table (+200 HU) in air (-1000 HU). Two
ellipsoid lungs (-850 HU) with a known share of emphysema-like voxels (-980 HU), a trachea of air
inside the body above them (not lung), and Gaussian noise. Truth is counted from the masks."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass
class Phantom:
    files: list[bytes]
    lung_volume_ml: float
    laa950_pct: float
    identifiers: dict[str, str]


IDENTITY = {
    "PatientName": "Testperson^Alma^Q",
    "PatientID": "MRN-7734921",
    "PatientBirthDate": "19471103",
    "AccessionNumber": "ACC-55501",
    "ReferringPhysicianName": "Referrer^Rita",
    "InstitutionName": "Saint Example Hospital",
    "OtherPatientIDs": "ALT-99812",
    "StationName": "CTROOM7",
}


def ct_phantom(
    *,
    slices: int = 24,
    size: int = 96,
    pixel_mm: float = 2.0,
    slice_mm: float = 5.0,
    emphysema: float = 0.12,
    noise: float = 15.0,
    seed: int = 1,
    identity: dict[str, str] | None = None,
    study_uid: str | None = None,
) -> Phantom:
    """A phantom as Part 10 byte streams (explicit VR little endian), with its truth."""
    rng = np.random.default_rng(seed)
    ident = {**IDENTITY, **(identity or {})}
    c = size / 2
    yy, xx = np.mgrid[0:size, 0:size]
    body = ((xx - c) / (0.43 * size)) ** 2 + ((yy - c) / (0.31 * size)) ** 2 <= 1
    table = (yy >= int(0.84 * size)) & (yy <= int(0.87 * size))
    trachea = ((xx - c) / (0.03 * size)) ** 2 + ((yy - 0.78 * c) / (0.03 * size)) ** 2 <= 1
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    lung_total = low_total = 0
    files = []
    for k in range(slices):
        img = np.full((size, size), -1000.0)
        img[body] = 40
        img[table] = 200
        z = (k + 0.5 - slices / 2) / (slices / 2)
        r = max(0.0, 1 - z * z)
        lung = np.zeros((size, size), bool)
        if r > 0:
            for cx in (c - 0.17 * size, c + 0.17 * size):
                lung |= ((xx - cx) / (0.13 * size * r**0.5)) ** 2 + (
                    (yy - c) / (0.2 * size * r**0.5)
                ) ** 2 <= 1
        if z > 0.5:
            img[trachea & ~lung] = -1000
        img[lung] = -850
        idx = np.flatnonzero(lung)
        if len(idx):
            img.flat[rng.choice(idx, size=int(len(idx) * emphysema), replace=False)] = -980
        img += rng.normal(0, noise, img.shape)
        img = np.clip(np.rint(img), -1024, 3071)
        lung_total += len(idx)
        low_total += int((img.flat[idx] < -950).sum())
        files.append(_slice(img, k, ident, study_uid, series_uid, frame_uid, pixel_mm, slice_mm, size))
    return Phantom(
        files=files,
        lung_volume_ml=lung_total * pixel_mm * pixel_mm * slice_mm / 1000,
        laa950_pct=100 * low_total / max(lung_total, 1),
        identifiers={
            **ident,
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": series_uid,
            "FrameOfReferenceUID": frame_uid,
        },
    )


def _slice(
    img: np.ndarray,
    k: int,
    ident: dict[str, str],
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    pixel_mm: float,
    slice_mm: float,
    size: int,
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    for keyword, value in ident.items():
        setattr(ds, keyword, value)
    ds.PatientSex = "F"
    ds.StudyDate, ds.StudyTime, ds.SeriesDate = "20260315", "083000", "20260315"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.Modality = "4711", 2, k + 1, "CT"
    ds.StudyDescription, ds.BodyPartExamined = "CT CHEST WITHOUT CONTRAST", "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, generate_uid()
    ds.ReferencedImageSequence = Sequence([ref])
    ds.private_block(0x0009, "EXAMPLE VENDOR", create=True).add_new(
        0x10, "LO", f"private {ident['PatientID']}"
    )
    ds.ImagePositionPatient = [-size * pixel_mm / 2, -size * pixel_mm / 2, k * slice_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness, ds.PixelSpacing = slice_mm, [pixel_mm, pixel_mm]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.PixelData = (img + 1024).astype(np.int16).tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
