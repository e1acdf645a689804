"""No identifier in any log line: the real product (`manage.py run`, every process at DEBUG) takes
a patient's ADT and order over MLLP and the study over DICOM, reports it upstream, answers FHIR and
API searches by MRN with an API token, and refuses a wrong console password; then its whole log is
searched for the patient's name parts, MRNs, birth date, accession number, the API token, the
secret keys and the password."""

from __future__ import annotations

import re
import time

import pytest
import requests

from tests.e2e.conftest import write_study
from tests.e2e.test_hl7 import _ack, _wait_mllp
from tests.support.fhir_upstream import FhirUpstream
from tests.support.hl7msg import adt, orm
from tests.support.phantom import ct_phantom
from tests.support.product import store_files

pytestmark = pytest.mark.e2e

NAME = "Quillfeather^Isolde^Winifred"
MRN, ALT_ID, ACCESSION, BIRTH = "MRN-3318275", "ALT-4419023", "ACC-77120", "19530317"
SECRET_KEY = "websec-secret-key-3f9a61c0d2b84e57a1"
DEID_SECRET = "websec-deid-secret-8c27e4b91f0a"
PASSWORD = "not-the-Passw0rd-7741"


def test_a_full_flow_at_debug_logs_no_identifier_token_or_secret(make_product, tmp_path):
    with FhirUpstream() as upstream:
        product = make_product(
            FHIRAI_LOG_LEVEL="DEBUG",
            FHIRAI_SECRET_KEY=SECRET_KEY,
            FHIRAI_DEID_SECRET=DEID_SECRET,
            FHIRAI_FHIR_UPSTREAM_URL=upstream.url,
        )
        token = product.manage("issue_token", "engine", "--role", "operator").strip()
        assert token.startswith("fhirai_")
        product.start()
        _wait_mllp(product.mllp_port)
        pid = f"PID|1||{MRN}^^^HOSP^MR||{NAME}||{BIRTH}|F"
        assert _ack(product.mllp_port, adt("LOG-A1", pid=pid)) == "AA"
        assert _ack(product.mllp_port, orm("LOG-O1", accession=ACCESSION, pid=pid)) == "AA"
        identity = {
            "PatientName": NAME,
            "PatientID": MRN,
            "OtherPatientIDs": ALT_ID,
            "PatientBirthDate": BIRTH,
            "AccessionNumber": ACCESSION,
        }
        ph = ct_phantom(slices=12, size=64, seed=93, identity=identity)
        store_files(write_study(ph, tmp_path / "study"), product.dicom_port)
        uid = ph.identifiers["StudyInstanceUID"]
        product.wait_for(f"/fhir/DiagnosticReport?study={uid}", lambda b: b.get("total") == 1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not upstream.state.all("DiagnosticReport"):
            time.sleep(0.3)
        assert upstream.state.all("DiagnosticReport"), product.tail()

        auth = {"Authorization": f"Bearer {token}"}
        found = requests.get(f"{product.http}/fhir/Patient?identifier={MRN}", headers=auth, timeout=30)
        assert found.status_code == 200 and found.json()["total"] == 1
        found = requests.get(f"{product.http}/api/studies?mrn={MRN}", headers=auth, timeout=30)
        assert found.status_code == 200 and MRN in found.text
        assert (
            requests.get(
                f"{product.http}/api/studies", headers={"Authorization": f"Bearer {token}x"}, timeout=30
            ).status_code
            == 401
        )
        browser = requests.Session()
        browser.get(f"{product.http}/login/", timeout=30)
        refused = browser.post(
            f"{product.http}/login/",
            data={
                "username": "olga",
                "password": PASSWORD,
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
            headers={"Referer": f"{product.http}/login/"},
            timeout=30,
        )
        assert refused.status_code == 200 and "did not match" in refused.text
    product.stop()

    log = product.log.read_text(errors="replace")
    assert " DEBUG " in log, "the product logged nothing at DEBUG: the test would prove nothing"
    secrets = {
        "API token": token,
        "API token secret": token.rsplit("_", 1)[1],
        "FHIRAI_SECRET_KEY": SECRET_KEY,
        "FHIRAI_DEID_SECRET": DEID_SECRET,
        "password": PASSWORD,
    }
    identifiers = {f"name part {p}": p for p in re.split(r"\^", NAME)} | {
        "MRN": MRN,
        "other patient id": ALT_ID,
        "accession number": ACCESSION,
        "birth date": BIRTH,
        "birth date (ISO)": f"{BIRTH[:4]}-{BIRTH[4:6]}-{BIRTH[6:]}",
    }
    leaks = [
        f"{what} in: {line.strip()[:300]}"
        for line in log.splitlines()
        for what, value in (secrets | identifiers).items()
        if value.lower() in line.lower()
    ]
    assert leaks == [], "\n".join(leaks[:20])
