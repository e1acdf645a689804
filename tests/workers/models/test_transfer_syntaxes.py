"""The model reads what the SCP stored as received: compressed series decode through pydicom's
handlers (RLE natively, JPEG family through pylibjpeg) and measure the same as uncompressed."""

from __future__ import annotations

from io import BytesIO

import pytest
import torch
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, RLELossless

from fhirai.deid.profile import dataset_deidentify
from tests.support.phantom import ct_phantom
from workers.models.ct_lung import CtLungQuant

pytestmark = pytest.mark.django_db  # the site profile is read from the database


def _compressed(files: list[bytes], syntax: str) -> list[bytes]:
    out = []
    for raw in files:
        ds = dcmread(BytesIO(raw))
        ds.compress(syntax)
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_measure_like_uncompressed_after_deidentification(syntax):
    ph = ct_phantom(slices=10, size=64, seed=31)
    compressed = [dataset_deidentify(raw)[0] for raw in _compressed(ph.files, syntax)]
    assert dcmread(BytesIO(compressed[0])).file_meta.TransferSyntaxUID == syntax
    model = CtLungQuant(torch.device("cpu"))
    plain = model([dcmread(BytesIO(raw)) for raw in ph.files])
    packed = model([dcmread(BytesIO(raw)) for raw in compressed])
    assert packed["measurements"] == plain["measurements"]
