"""Priors end to end: the real product (`manage.py run`: SCP, Celery workers) and a real Orthanc that
knows fhirai's priors AE title. The patient's earlier CT chest is in the PACS; the new study comes
over a real association; the default worker's prior_fetch task asks Orthanc by C-FIND, moves the
study by C-MOVE into fhirai's SCP, the prior is de-identified by its own task, and the inference
worker runs ct-lung-change on both: the report states the interval change."""

from __future__ import annotations

import shutil
from io import BytesIO

import psycopg
import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.e2e.conftest import write_study
from tests.support.orthanc import ORTHANC, orthanc_running
from tests.support.phantom import ct_phantom
from tests.support.product import store_files

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not shutil.which(ORTHANC), reason="needs Debian's orthanc")]


def _to_orthanc(port: int, files: list[bytes], day: str) -> None:
    scu = AE(ae_title="MODALITY")
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", port, ae_title="ORTHANC")
    assert assoc.is_established
    for raw in files:
        ds = dcmread(BytesIO(raw))
        ds.StudyDate = ds.SeriesDate = day
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()


def test_a_prior_moved_from_the_pacs_reaches_the_model_and_its_report(make_product, database, tmp_path):
    prior = ct_phantom(slices=16, size=96, seed=31, emphysema=0.05)
    current = ct_phantom(slices=16, size=96, seed=32, emphysema=0.15)
    product = make_product()
    with psycopg.connect(database.url, autocommit=True) as conn:  # the site switches the model on
        conn.execute("UPDATE routing_modelrecord SET enabled = (name = 'ct-lung-change')")
    # Orthanc lets a known modality query and move (FHIRAI), and sends to a known one (FHIRAI_PRIORS).
    modalities = {
        "fhirai": ("FHIRAI", "127.0.0.1", product.dicom_port),
        "fhirai-priors": ("FHIRAI_PRIORS", "127.0.0.1", product.dicom_port),
    }
    with orthanc_running(tmp_path / "pacs", modalities=modalities) as pacs:
        _to_orthanc(pacs["dicom"], prior.files, "20250901")
        product.env["FHIRAI_PRIORS_PACS"] = f"ORTHANC@127.0.0.1:{pacs['dicom']}"
        product.start()
        store_files(write_study(current, tmp_path / "study"), product.dicom_port)
        uid = current.identifiers["StudyInstanceUID"]
        found = product.wait_for(f"/fhir/DiagnosticReport?study={uid}", lambda b: b.get("total") == 1)
    report = found["entry"][0]["resource"]
    with psycopg.connect(database.url) as conn:
        roles = dict(conn.execute("SELECT role, state FROM ingest_study").fetchall())
        fetch = conn.execute(
            "SELECT state, source, moved, interval_days, detail FROM routing_priorfetch"
        ).fetchone()
    assert "195 days earlier" in report["conclusion"], fetch  # 2025-09-01 to 2026-03-15
    assert roles == {"clinical": "reported", "prior": "no_model"}
    assert fetch[:4] == ("ready", "pacs", len(prior.files), 195)
    assert product.get(f"/fhir/DiagnosticReport?study={prior.identifiers['StudyInstanceUID']}")["total"] == 0
