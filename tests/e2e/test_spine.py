"""The spine end to end: the real product (`manage.py run`: HTTP, DICOM SCP, Celery workers as
separate processes) on PostgreSQL and Redis, a study sent over a real DICOM association (dcmtk's
storescu when installed), the report read back over HTTP and from the upstream FHIR server."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psycopg
import pytest

from tests.e2e.conftest import write_study
from tests.support.fhir_upstream import FhirUpstream
from tests.support.phantom import ct_phantom
from tests.support.product import FreshDatabase, Product, store_files

pytestmark = pytest.mark.e2e


def _reports(product: Product, study_uid: str) -> list[dict]:
    bundle = product.get(f"/fhir/DiagnosticReport?study={study_uid}&_include=DiagnosticReport:result")
    return [e["resource"] for e in bundle.get("entry", [])]


def _values(resources: list[dict]) -> dict[str, float]:
    return {
        r["valueQuantity"]["code"]: r["valueQuantity"]["value"]
        for r in resources
        if r["resourceType"] == "Observation"
    }


def _study_state(database: FreshDatabase) -> str:
    with psycopg.connect(database.url) as conn:
        row = conn.execute("SELECT state FROM ingest_study").fetchone()
    return row[0] if row else ""


def _wait_state(database: FreshDatabase, states: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _study_state(database)
        if state in states:
            return state
        time.sleep(0.1)
    raise AssertionError(f"study never reached {states}; last {_study_state(database)!r}")


def test_study_in_report_out_written_upstream_and_a_resend_makes_no_second_report(make_product, tmp_path):
    ph = ct_phantom(slices=40, size=128, seed=21)
    with FhirUpstream() as upstream:
        product = make_product(FHIRAI_FHIR_UPSTREAM_URL=upstream.url)
        product.start()
        uid = ph.identifiers["StudyInstanceUID"]
        folder = write_study(ph, tmp_path / "study")
        store_files(folder, product.dicom_port)
        found = product.wait_for(f"/fhir/DiagnosticReport?study={uid}", lambda b: b.get("total") == 1)
        report = found["entry"][0]["resource"]
        assert report["subject"]["identifier"]["value"] == ph.identifiers["PatientID"]
        values = _values(_reports(product, uid))
        assert values["mL"] == pytest.approx(ph.lung_volume_ml, rel=0.03)
        assert values["%"] == pytest.approx(ph.laa950_pct, abs=1.0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not upstream.state.all("DiagnosticReport"):
            time.sleep(0.2)
        [sent] = upstream.state.all("DiagnosticReport")
        assert sent["identifier"] == report["identifier"] and sent["conclusion"] == report["conclusion"]
        store_files(folder, product.dicom_port)  # the same study again
        time.sleep(6)  # longer than the quiet period plus a sweep
        assert product.get(f"/fhir/DiagnosticReport?study={uid}")["total"] == 1
        assert len(upstream.state.all("DiagnosticReport")) == 1


def test_killed_right_after_the_acks_the_product_still_reports_after_restart(
    make_product, tmp_path, database
):
    ph = ct_phantom(slices=16, size=96, seed=22)
    product = make_product(FHIRAI_STUDY_QUIET_SECONDS="5")
    product.start()
    store_files(write_study(ph, tmp_path / "study"), product.dicom_port)
    product.kill()  # every C-STORE got Success; nothing downstream has happened yet
    assert _study_state(database) == "receiving"
    product.start()
    uid = ph.identifiers["StudyInstanceUID"]
    product.wait_for(f"/fhir/DiagnosticReport?study={uid}", lambda b: b.get("total") == 1)


def test_killed_during_inference_the_product_still_reports_after_restart(make_product, tmp_path, database):
    ph = ct_phantom(slices=16, size=96, seed=23)
    product = make_product()
    product.start()
    store_files(write_study(ph, tmp_path / "study"), product.dicom_port)
    state = _wait_state(database, {"queued", "reported"})
    product.kill()
    product.start()
    uid = ph.identifiers["StudyInstanceUID"]
    product.wait_for(f"/fhir/DiagnosticReport?study={uid}", lambda b: b.get("total") == 1)
    assert state in {"queued", "reported"}


def test_embedded_defaults_survive_a_kill_during_inference(tmp_path):
    """SQLite and the SQLite-backed broker: the embedded broker loses the messages a killed worker
    held, so this is the case the sweep and the start-up recovery exist for."""
    ph = ct_phantom(slices=12, size=64, seed=24)
    var = tmp_path / "var"
    product = Product(var, {})  # no DATABASE_URL, no CELERY_BROKER_URL: the embedded product
    try:
        product.start()
        store_files(write_study(ph, tmp_path / "study"), product.dicom_port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _sqlite_state(var) not in ("queued", "reported"):
            time.sleep(0.1)
        product.kill()
        product.start()
        uid = ph.identifiers["StudyInstanceUID"]
        product.wait_for(f"/fhir/DiagnosticReport?study={uid}", lambda b: b.get("total") == 1)
        assert (var / "fhirai.sqlite3").exists() and (var / "broker.sqlite3").exists()
    finally:
        product.stop()


def _sqlite_state(var: Path) -> str:
    if not (var / "fhirai.sqlite3").exists():
        return ""
    with sqlite3.connect(var / "fhirai.sqlite3", timeout=5) as conn:
        try:
            row = conn.execute("SELECT state FROM ingest_study").fetchone()
        except sqlite3.OperationalError:
            return ""
    return row[0] if row else ""
