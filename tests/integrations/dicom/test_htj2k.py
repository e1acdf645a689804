"""HTJ2K (issue 9): an instance compressed with High-Throughput JPEG 2000 by a real encoder
(OpenJPH's ojph_compress, Debian's openjph-tools) is accepted over C-STORE in its own transfer
syntax, kept byte for byte, and decoded where a model needs pixels (pydicom's HTJ2K decoder through
pylibjpeg-openjpeg) to exactly the pixels that were encoded."""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import HTJ2KLossless
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from fhirai import blobs
from fhirai.ingest.models import Instance
from integrations.dicom import status
from integrations.dicom.scp import server_start
from tests.support.phantom import ct_phantom
from tests.support.product import free_port
from workers.inference.preprocess import _grey_frame

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not shutil.which("ojph_compress"), reason="needs Debian's openjph-tools"),
]


def _htj2k_instance(tmp_path: Path) -> tuple[bytes, np.ndarray]:
    """A CT slice whose 12-bit stored values are HTJ2K-coded (reversible, lossless)."""
    ds = dcmread(BytesIO(ct_phantom(slices=1, size=64).files[0]))
    stored = np.clip(ds.pixel_array.astype(np.int32) + 1024, 0, 4095).astype(np.uint16)
    raw, coded = tmp_path / "slice.yuv", tmp_path / "slice.j2c"
    stored.tofile(raw)
    subprocess.run(
        ["ojph_compress", "-i", str(raw), "-o", str(coded), "-dims", "{64,64}", "-num_comps", "1"]
        + ["-signed", "false", "-bit_depth", "12", "-downsamp", "{1,1}", "-reversible", "true"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept = -2048  # stored value 0 is -2048 HU
    ds.PixelData = encapsulate([coded.read_bytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), stored


def test_an_htj2k_instance_is_kept_as_sent_and_decodes_to_the_encoded_pixels(settings, blob_dir, tmp_path):
    raw, stored = _htj2k_instance(tmp_path)
    port = free_port()
    server = server_start(("127.0.0.1", port))
    try:
        scu = AE(ae_title="MODALITY")
        scu.add_requested_context(CTImageStorage, [HTJ2KLossless])
        assoc = scu.associate("127.0.0.1", port, ae_title="FHIRAI")
        assert assoc.is_established
        assert assoc.accepted_contexts[0].transfer_syntax[0] == HTJ2KLossless  # accepted as sent
        sent = dcmread(BytesIO(raw))
        assert assoc.send_c_store(sent).Status == status.SUCCESS
        assoc.release()
    finally:
        server.shutdown()
    instance = Instance.objects.get()
    assert instance.transfer_syntax_uid == HTJ2KLossless
    kept = dcmread(BytesIO(blobs.get(instance.blob_key)))
    assert kept.PixelData == sent.PixelData  # never transcoded on receipt
    assert np.array_equal(_grey_frame(kept), stored)  # the decoder a model's preprocessing uses
