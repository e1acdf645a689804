"""A patient's opt-out keeps their studies away from every model, visibly: from the site's list
(API), or an HL7 v2 ADT's PD1-12 Protection Indicator; lifting it lets later studies through."""

from __future__ import annotations

import pytest

from fhirai.api.tokens import token_issue
from fhirai.audit.models import TimelineEvent
from fhirai.context.messages import messages_process
from fhirai.context.models import OptOut
from fhirai.ingest.messages import messages_receive
from fhirai.ingest.models import StudyState
from integrations.hl7.handlers import inbound_from
from tests.support import pipeline
from tests.support.hl7msg import message, msh
from tests.support.phantom import ct_phantom

pytestmark = pytest.mark.django_db


def _optout(client, role: str, mrn: str, active: bool = True):
    token = token_issue(f"optout-{role}-{mrn}-{active}", role=role)[1]
    return client.put(
        "/api/optouts",
        {"mrn": mrn, "active": active, "note": "asked at the front desk"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


def _study(mrn: str, seed: int):
    return pipeline.receive(ct_phantom(slices=8, size=48, seed=seed, identity={"PatientID": mrn}))


def test_a_patient_on_the_sites_list_is_skipped_visibly_and_others_are_not(client, settings, blob_dir):
    assert _optout(client, "viewer", "MRN-OPT-1").status_code == 403
    answer = _optout(client, "operator", "MRN-OPT-1")
    assert answer.status_code == 200 and answer.json()["source"] == "site" and answer.json()["active"]
    study = _study("MRN-OPT-1", 1)
    assert pipeline.complete_and_deidentify(study, settings) is None  # no job: no model sees it
    study.refresh_from_db()
    assert study.state == StudyState.NO_MODEL
    skipped = TimelineEvent.objects.get(item_kind="study", item_id=study.pk, event="skipped")
    assert skipped.detail == "skipped: opt-out (the site's list)"
    other = _study("MRN-OTHER-2", 2)
    assert pipeline.complete_and_deidentify(other, settings) is not None
    # Lifted: the patient's next study goes to the models again.
    assert _optout(client, "admin", "MRN-OPT-1", active=False).status_code == 200
    again = _study("MRN-OPT-1", 3)
    assert pipeline.complete_and_deidentify(again, settings) is not None


def test_hl7_pd1_12_sets_and_lifts_the_opt_out(settings, blob_dir):
    pid = "PID|1||MRN-PD1-7^^^HOSP^MR||Optout^Otto||19550505|M"

    def adt(control: str, flag: str) -> bytes:
        return message(msh(control, "ADT^A08^ADT_A01"), "EVN|A08", pid, "PD1|" + "|" * 11 + flag, "PV1|1|O")

    stored = messages_receive([inbound_from(adt("PD1-1", "Y"), "t")[1]])
    messages_process(up_to=max(s.message_id for s in stored))
    row = OptOut.objects.get(mrn="MRN-PD1-7", source="hl7")
    assert row.active and row.reference.startswith("message ")
    study = _study("MRN-PD1-7", 4)
    assert pipeline.complete_and_deidentify(study, settings) is None
    assert TimelineEvent.objects.filter(
        item_kind="study", item_id=study.pk, detail="skipped: opt-out (HL7 PD1-12)"
    ).exists()
    stored = messages_receive([inbound_from(adt("PD1-2", "N"), "t")[1]])
    messages_process(up_to=max(s.message_id for s in stored))
    assert not OptOut.objects.get(mrn="MRN-PD1-7", source="hl7").active
    # A message that does not say (no PD1, or PD1-12 empty) changes nothing.
    stored = messages_receive([inbound_from(adt("PD1-3", ""), "t")[1]])
    messages_process(up_to=max(s.message_id for s in stored))
    assert not OptOut.objects.get(mrn="MRN-PD1-7", source="hl7").active


def _consent(status: str, provision: str, patient_id: str, rid: str | None = None) -> dict:
    body = {
        "resourceType": "Consent",
        "status": status,
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]
        },
        "provision": {"type": provision},
    }
    return {**body, "id": rid} if rid else body


def test_a_fhir_consent_that_denies_is_an_opt_out_and_a_later_version_lifts_it(client, settings, blob_dir):
    import json

    token = token_issue("consent-engine", role="operator")[1]
    headers = {"Authorization": f"Bearer {token}"}
    patient = client.post(
        "/fhir/Patient",
        json.dumps(
            {"resourceType": "Patient", "identifier": [{"system": "urn:hosp:mrn", "value": "MRN-CONS-9"}]}
        ),
        content_type="application/fhir+json",
        headers=headers,
    )
    assert patient.status_code == 201
    created = client.post(
        "/fhir/Consent",
        json.dumps(_consent("active", "deny", patient.json()["id"])),
        content_type="application/fhir+json",
        headers=headers,
    )
    assert created.status_code == 201, created.content
    row = OptOut.objects.get(mrn="MRN-CONS-9", source="fhir")
    assert row.active and row.reference == f"Consent/{created.json()['id']}"
    study = _study("MRN-CONS-9", 5)
    assert pipeline.complete_and_deidentify(study, settings) is None
    assert TimelineEvent.objects.filter(
        item_kind="study", item_id=study.pk, detail="skipped: opt-out (FHIR Consent)"
    ).exists()
    rid = created.json()["id"]
    updated = client.put(
        f"/fhir/Consent/{rid}",
        json.dumps(_consent("inactive", "deny", patient.json()["id"], rid)),
        content_type="application/fhir+json",
        headers=headers,
    )
    assert updated.status_code == 200, updated.content
    assert not OptOut.objects.get(mrn="MRN-CONS-9", source="fhir").active
    assert (
        client.get("/fhir/Consent?patient=Patient/" + patient.json()["id"], headers=headers).json()["total"]
        == 1
    )
