"""The header fast path (fhirai.ingest.header) reads the same facts as pydicom's dcmread, for
every file of pydicom's test data it takes (character sets included), and hands the rest back."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread

from fhirai.ingest import receive
from fhirai.ingest.header import KEYWORDS, header_read
from tests.support.phantom import ct_phantom

FILES = sorted((Path(pydicom.__file__).parent / "data").rglob("*.dcm"))


def _facts(ds) -> dict[str, object]:
    out: dict[str, object] = {k: receive._text(ds, k, 400) for k in KEYWORDS}
    out.update({k: str(ds.get(k, "") or "") for k in receive.REQUIRED_UIDS})
    out["plane"], out["number"] = receive._plane(ds), receive._instance_number(ds)
    out["syntax"] = str(ds.file_meta.TransferSyntaxUID)
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_fast_path_reads_what_pydicom_reads():
    taken = 0
    for path in FILES:
        raw = path.read_bytes()
        fast = header_read(raw)
        if fast is None:
            continue
        taken += 1
        assert _facts(fast) == _facts(dcmread(BytesIO(raw), stop_before_pixels=True)), path.name
    assert taken >= 50  # most of the set, character-set files included


def test_a_phantom_slice_takes_the_fast_path_and_odd_input_does_not():
    raw = ct_phantom(slices=1, size=32).files[0]
    assert header_read(raw) is not None
    assert header_read(b"\x00" * 50) is None
    assert header_read(raw[:128] + b"XXXX" + raw[132:]) is None  # no DICM prefix
    # an element of undefined length before the last indexed one: pydicom walks it
    ds = dcmread(BytesIO(raw))
    ds.ReferencedImageSequence = [pydicom.Dataset()]
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    sequence = data.find(b"\x08\x00\x40\x11SQ")
    assert sequence > 0
    undefined = data[: sequence + 8] + b"\xff\xff\xff\xff" + data[sequence + 12 :]
    assert header_read(undefined) is None
