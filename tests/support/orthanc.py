"""A real Orthanc (Debian's package) as the test PACS: started on free loopback ports with its own
storage, told which AE titles it may send to (C-MOVE destinations), stopped afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from tests.support.product import free_port, port_open

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


@contextmanager
def orthanc_running(
    folder: Path, *, modalities: dict[str, tuple[str, str, int]] | None = None
) -> Iterator[dict]:
    """Yields {"dicom": port, "http": port, "process": Popen}; AE title ORTHANC, called-AE checked.
    `modalities`: name -> (AE title, host, port) Orthanc knows (and so lets query and move)."""
    dicom_port, http_port = free_port(), free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "fhirai-test-pacs",
                "StorageDirectory": str(folder / "storage"),
                "IndexDirectory": str(folder / "index"),
                "DicomAet": "ORTHANC",
                "DicomPort": dicom_port,
                "HttpPort": http_port,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "DicomCheckCalledAet": True,
                "DicomAlwaysAllowStore": True,
                "DicomAlwaysAllowFind": True,
                "DicomAlwaysAllowEcho": True,
                "DicomModalities": {name: list(entry) for name, entry in (modalities or {}).items()},
                "Plugins": [],
            }
        )
    )
    process = subprocess.Popen(
        [ORTHANC, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder
    )
    deadline = time.monotonic() + 30
    while not (port_open(dicom_port) and port_open(http_port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield {"dicom": dicom_port, "http": http_port, "process": process}
    finally:
        process.terminate()
        process.wait(15)


def orthanc_find(port: int, level: str, **keys: str) -> list[Dataset]:
    """A Study Root C-FIND at `level` with the given keys (an empty value: a return key)."""
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC")
    assert assoc.is_established
    found = [ds for status, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind) if ds]
    assoc.release()
    return found
