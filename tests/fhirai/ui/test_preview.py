"""The item page's preview image: rendered here from the pixel data as the modality meant it."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.utils import timezone
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.uid import (
    MPEG2MPML,
    CTImageStorage,
    ExplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
    generate_uid,
)

from fhirai.errors import FhiraiError
from fhirai.ingest.models import Instance, Study
from fhirai.ingest.receive import instance_receive
from fhirai.render import (
    PreviewUnavailable,
    dataset_preview_png,
    instance_preview_png,
    study_preview_instance,
    study_preview_png,
)
from fhirai.routing.rules import WITHHELD
from tests.support import pipeline

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"  # shipped with pydicom: no download


def png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(BytesIO(data))
    image.load()
    return image


def mono(values: np.ndarray, **attrs: object) -> Dataset:
    """An uncompressed single-frame greyscale CT image of `values` (signed 16 bit)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = values.astype(np.int16).tobytes()
    return ds


def ramp() -> np.ndarray:
    return np.tile(np.arange(0, 1000, 10, dtype=np.int16), (20, 1))  # 20 x 100, 0..990


def test_phantom_slice_renders_as_greyscale_png(phantom):
    image = png(dataset_preview_png(dcmread(BytesIO(phantom.files[12]))))
    assert image.mode == "L" and image.size == (96, 96)  # never scaled up
    pixels = np.asarray(image)
    assert pixels.min() == 0 and pixels.max() == 255  # no window in the header: the image's range


@pytest.mark.parametrize("size", [32, 50, 95])
def test_size_limit_keeps_the_aspect_ratio(size):
    ds = dcmread(TEST_FILES / "JPEG2000.dcm")  # 256 wide, 1024 high
    image = png(dataset_preview_png(ds, size=size))
    assert max(image.size) == size and image.size == (round(size / 4), size)


def test_monochrome1_is_inverted():
    ds = mono(ramp(), PhotometricInterpretation="MONOCHROME1")
    pixels = np.asarray(png(dataset_preview_png(ds)))
    assert pixels[0, 0] == 255  # the lowest stored value is white
    assert pixels[0, -1] == 0


def test_modality_lut_and_window_clip_outside_values():
    # Stored 0..990 with intercept -1000: HU -1000..-10; window -500 +/- 50.
    ds = mono(ramp(), RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=[-500, 40], WindowWidth=[100, 400])
    pixels = np.asarray(png(dataset_preview_png(ds)))[0]
    hu = np.arange(0, 1000, 10) - 1000
    assert (pixels[hu < -551] == 0).all() and (pixels[hu > -450] == 255).all()
    inside = pixels[(hu > -540) & (hu < -460)]
    assert 0 < inside.min() and inside.max() < 255 and (np.diff(inside.astype(int)) > 0).all()


def test_without_window_the_image_range_is_used():
    pixels = np.asarray(png(dataset_preview_png(mono(ramp()))))[0]
    assert pixels[0] == 0 and pixels[-1] == 255


def test_voi_lut_sequence_is_applied():
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.LUTData = [0] * 128 + [255] * 128  # a step at stored value 128
    ds = mono(ramp())
    ds.VOILUTSequence = [lut]
    ds["VOILUTSequence"][0]["LUTData"].VR = "US"
    pixels = np.asarray(png(dataset_preview_png(ds)))[0]
    stored = np.arange(0, 1000, 10)
    assert (pixels[stored < 128] == 0).all() and (pixels[stored >= 128] == 255).all()


CASES = [
    ("MR_small_RLE.dcm", "L"),
    ("MR_small_jpeg_ls_lossless.dcm", "L"),
    ("MR_small_jp2klossless.dcm", "L"),
    ("JPEG2000.dcm", "L"),
    ("JPGExtended.dcm", "L"),
    ("SC_rgb_rle.dcm", "RGB"),
    ("SC_rgb_jpeg_dcmtk.dcm", "RGB"),  # YBR_FULL in JPEG baseline
    ("SC_ybr_full_422_uncompressed.dcm", "RGB"),
    ("SC_rgb_rle_16bit.dcm", "RGB"),
    ("examples_palette.dcm", "RGB"),
    ("examples_ybr_color.dcm", "RGB"),  # 30 frames
    ("rtdose.dcm", "L"),  # 15 frames, 32 bit
]


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_compressed_colour_and_multiframe_files_render(name, mode):
    path = TEST_FILES / name
    if not path.exists():
        pytest.skip(f"{name} is not among pydicom's shipped test files")
    ds = dcmread(path)
    try:
        pixel_array(ds, index=0)
    except Exception as exc:  # noqa: BLE001 - depends on the decoders installed here
        pytest.skip(f"no installed decoder reads {ds.file_meta.TransferSyntaxUID.name}: {exc}")
    image = png(dataset_preview_png(ds, size=64))
    assert image.mode == mode and max(image.size) <= 64


def test_colour_passes_through_as_rgb():
    ds = dcmread(TEST_FILES / "SC_rgb_rle.dcm")
    pixels = np.asarray(png(dataset_preview_png(ds)))
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    ybr = np.asarray(png(dataset_preview_png(dcmread(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm"))))
    assert ybr[0, 0, 0] > 240 and ybr[0, 0, 1] < 10 and ybr[0, 0, 2] < 10  # red, not YCbCr


def test_multiframe_shows_the_middle_frame():
    ds = dcmread(TEST_FILES / "examples_ybr_color.dcm")
    frames = int(ds.NumberOfFrames)
    shown = np.asarray(png(dataset_preview_png(ds, size=1024))).astype(int)
    assert shown.shape == (int(ds.Rows), int(ds.Columns), 3)
    middle = pixel_array(ds, index=frames // 2).astype(int)
    first = pixel_array(ds, index=0).astype(int)
    assert np.abs(shown - middle).mean() < np.abs(shown - first).mean()
    assert np.abs(shown - middle).max() <= 1


def test_undecodable_syntax_names_it():
    ds = mono(np.zeros((8, 8)))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3not really mpeg"])
    ds["PixelData"].VR = "OB"
    with pytest.raises(PreviewUnavailable, match="MPEG2") as info:
        dataset_preview_png(ds)
    assert isinstance(info.value, FhiraiError)


def test_no_pixel_data_is_unavailable():
    with pytest.raises(PreviewUnavailable, match="no pixel data"):
        dataset_preview_png(dcmread(TEST_FILES / "test-SR.dcm"))


@pytest.mark.django_db
def test_study_preview_is_the_middle_slice_of_the_largest_image_series(phantom, blob_dir):
    results = [instance_receive(raw=raw, calling_ae="TESTSCU") for raw in reversed(phantom.files)]
    study = Study.objects.get(pk=results[0].study_id)
    # A larger series of key objects (no pixel data) must not be chosen; its blobs are never read.
    now = timezone.now()
    for n in range(30):
        Instance.objects.create(
            study=study,
            sop_instance_uid=f"2.25.{n + 1}",
            sop_class_uid=KeyObjectSelectionDocumentStorage,
            series_uid="2.25.999",
            transfer_syntax_uid=ExplicitVRLittleEndian,
            blob_key="raw/00/missing",
            size=0,
            received_at=now,
        )
    chosen = study_preview_instance(study)
    assert chosen is not None and chosen.series_uid == phantom.identifiers["SeriesInstanceUID"]
    header = dcmread(BytesIO(phantom.files[12]), stop_before_pixels=True)
    assert chosen.sop_instance_uid == header.SOPInstanceUID  # InstanceNumber 13 of 24
    image = png(study_preview_png(study, deidentified=False, size=48))
    assert image.size == (48, 48)


@pytest.mark.django_db
def test_deidentified_preview_needs_the_copy(phantom, settings, blob_dir):
    study = pipeline.receive(phantom)
    instance = study_preview_instance(study)
    assert instance is not None
    with pytest.raises(PreviewUnavailable, match="no de-identified copy"):
        instance_preview_png(instance, deidentified=True)
    with pytest.raises(PreviewUnavailable):
        study_preview_png(study, deidentified=True)
    pipeline.complete_and_deidentify(study, settings)
    instance.refresh_from_db()
    raw = instance_preview_png(instance, deidentified=False)
    deid = instance_preview_png(instance, deidentified=True)
    assert np.array_equal(np.asarray(png(raw)), np.asarray(png(deid)))  # CT pixels are not cleaned
    Instance.objects.filter(pk=instance.pk).update(deid_blob_key=WITHHELD)
    instance.refresh_from_db()
    with pytest.raises(PreviewUnavailable, match="withheld"):
        instance_preview_png(instance, deidentified=True)


@pytest.mark.django_db
def test_study_without_image_has_no_preview():
    now = timezone.now()
    study = Study.objects.create(
        study_uid=generate_uid(), state_changed_at=now, first_received_at=now, last_received_at=now
    )
    assert study_preview_instance(study) is None
    with pytest.raises(PreviewUnavailable, match="no image"):
        study_preview_png(study, deidentified=False)
