"""The holdout run a PACS administrator would do: every file of pydicom's test set and of
pydicom-data's (the PyPI package, a test dependency: installed, never downloaded at run time) is
sent with dcmtk's dcmsend to dcmtk's storescp and to fhirai, and every file storescp accepts,
fhirai accepts too, over C-STORE and over STOW-RS; decodable pixel data comes back identical to
what pydicom reads from the original file."""

from __future__ import annotations

import shutil
import subprocess
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread
from pydicom.uid import UID

from fhirai import blobs
from fhirai.ingest.models import Instance, Rejection, Study
from integrations.dicom.scp import server_start
from integrations.dicom.status import KEPT_CODES
from integrations.dicomweb.multipart import Part, parts_build
from tests.support.product import free_port, port_open

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not shutil.which("storescp") or not shutil.which("dcmsend"), reason="needs dcmtk"),
]
PYDICOM_FILES = sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))
try:
    import data_store  # pydicom-data

    DATA_FILES = sorted((Path(data_store.__file__).parent / "data").glob("*.dcm"))
except ImportError:  # an environment without the test extras' pydicom-data
    DATA_FILES = []
FILES = PYDICOM_FILES + DATA_FILES


def _send(path: Path, port: int, aec: str) -> bool:
    done = subprocess.run(
        # dcmsend proposes each file's own transfer syntax (storescu proposes uncompressed only,
        # and fails converting a compressed file before anything reaches the SCP)
        ["dcmsend", "-aec", aec, "127.0.0.1", str(port), str(path)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
    )
    return done.returncode == 0 and b"E:" not in done.stderr + done.stdout


@pytest.fixture
def storescp(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "+xa", "-od", str(tmp_path), "-aet", "STORESCP", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_open(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(10)


def _sop(path: Path) -> str:
    try:
        return str(dcmread(path, stop_before_pixels=True, force=True).get("SOPInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - some test files are deliberately broken
        return ""


def _uids_complete(path: Path) -> bool:
    """Each required UID present and well-formed (pydicom-data has files with a hash for a UID)."""
    ds = dcmread(path, stop_before_pixels=True, force=True)
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    return all(ds.get(k) and UID(str(ds.get(k))).is_valid for k in keys)


def _pixels_match(original: Path, stored: bytes) -> bool | None:
    """True/False when the original's pixels decode; None when pydicom cannot decode them."""
    try:
        expected = dcmread(original, force=True).pixel_array
    except Exception:  # noqa: BLE001 - not decodable here: nothing to compare
        return None
    try:
        return bool(np.array_equal(dcmread(BytesIO(stored)).pixel_array, expected))
    except Exception:  # noqa: BLE001 - the original decodes and the stored copy does not: a mismatch
        return False


def test_every_file_dcmtk_accepts_fhirai_accepts_with_identical_pixels(storescp, client, blob_dir):
    accepted_by_dcmtk = [p for p in FILES if _send(p, storescp, "STORESCP")]
    assert len(accepted_by_dcmtk) >= 40, [p.name for p in accepted_by_dcmtk]
    assert len(DATA_FILES) == 68, "pydicom-data is a test dependency (pyproject.toml [test])"

    # STOW-RS first (the same durable path), then the database is emptied and C-STORE follows.
    stow_refused = []
    for path in accepted_by_dcmtk:
        body, boundary = parts_build([Part("application/dicom", path.read_bytes())])
        answer = client.post(
            "/dicomweb/studies",
            data=body,
            content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        )
        if answer.status_code not in (200, 202) or "00081198" in answer.json():
            stow_refused.append((path.name, answer.status_code))
    assert stow_refused == []
    stow_kept = Rejection.objects.filter(code__in=KEPT_CODES).count()
    Instance.objects.all().delete()
    Study.objects.all().delete()
    Rejection.objects.all().delete()

    port = free_port()
    server = server_start(("127.0.0.1", port))
    try:
        refused = [p.name for p in accepted_by_dcmtk if not _send(p, port, "FHIRAI")]
    finally:
        server.shutdown()
    assert refused == []

    # Kept but not processed (a UID missing): answered Warning B007, listed as rejected.
    kept = Rejection.objects.filter(code__in=KEPT_CODES).count()
    assert kept == stow_kept
    stored = set(Instance.objects.values_list("sop_instance_uid", flat=True))
    not_stored = [p.name for p in accepted_by_dcmtk if _sop(p) not in stored]
    # (several test files share a SOP Instance UID: those are stored once, as a resend is)
    assert len(not_stored) <= kept and all(
        not _uids_complete(p) for p in accepted_by_dcmtk if p.name in not_stored
    )
    compared, mismatched = 0, []
    sops = [_sop(p) for p in accepted_by_dcmtk]
    for path, sop in zip(accepted_by_dcmtk, sops, strict=True):
        instance = Instance.objects.filter(sop_instance_uid=sop).first()
        if instance is None or sops.count(sop) > 1:
            continue  # kept with a warning, or a SOP Instance UID several test files share
        same = _pixels_match(path, blobs.get(instance.blob_key))
        if same is not None:
            compared += 1
            if not same:
                mismatched.append(path.name)
    assert mismatched == [] and compared >= 20
    print(
        f"holdout: {len(accepted_by_dcmtk)} of {len(FILES)} files ({len(PYDICOM_FILES)} pydicom, "
        f"{len(DATA_FILES)} pydicom-data) accepted by storescp and by fhirai "
        f"({kept} kept with Warning B007: a UID missing or malformed); {compared} pixel comparisons identical"
    )
