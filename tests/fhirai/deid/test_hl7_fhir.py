"""HL7 v2 field rules and FHIR element rules: identifiers pseudonymized consistently, persons and
contacts removed, dates shifted or coarsened, free text cleaned with the record's own identifiers."""

from __future__ import annotations

import json

from fhirai.deid.fhir import resource_deidentify
from fhirai.deid.hl7v2 import message_deidentify
from fhirai.deid.profile import DeidProfile, patient_pseudonym

ORU = (
    "\r".join(
        [
            "MSH|^~\\&|RIS|HOSP|FHIRAI|HOSP|20241105103000||ORU^R01^ORU_R01|MSG0001|P|2.5.1",
            "PID|1||MRN-7734921^^^HOSP^MR~ALT-99812^^^OTHER^PI||Zyxqual^Brunhild^K||19471103|F|||12 Elm Street^^Springfield^IL^62701||(555)201-3344|||||ACCT-1188|123-45-6789",
            "NK1|1|Zyxqual^Hagen|SPO|12 Elm Street^^Springfield|(555)201-9999",
            "|".join(
                ["PV1", "1", "O", "CT^1^1", "", "", "", "1234^Referrer^Rita^^^Dr", *[""] * 11, "VIS-445"]
            ),
            "ORC|RE|PL-1|FL-1||CM||||20241105101500|||1234^Referrer^Rita",
            "OBR|1|PL-1|FL-1|24627-2^CT Chest^LN|||20241105101500|||||||||1234^Referrer^Rita||ACC-55501",
            "OBX|1|TX|24627-2^CT Chest^LN||Brunhild Zyxqual (MRN 7734921), DOB 11/03/1947: mild emphysema. Call (555) 201-3344.||||||F|||20241105",
            "NTE|1||Discussed with Dr Rita Referrer and husband Hagen Zyxqual.",
        ]
    )
    + "\r"
)
SECRETS = ["Zyxqual", "Brunhild", "7734921", "99812", "Elm", "Springfield", "201-3344", "201 3344", "11/03", "Rita",
           "Referrer", "Hagen", "123-45-6789", "ACCT-1188", "VIS-445", "ACC-55501"]  # fmt: skip


def test_hl7_message_keeps_structure_and_loses_identity():
    out = message_deidentify(ORU, DeidProfile())
    for secret in SECRETS:
        assert secret not in out.message, secret
    segments = out.message.rstrip("\r").split("\r")
    assert [s[:3] for s in segments] == ["MSH", "PID", "NK1", "PV1", "ORC", "OBR", "OBX", "NTE"]
    pid = segments[1].split("|")
    assert pid[3].split("~")[0] == f"{patient_pseudonym('MRN-7734921')}^^^HOSP^MR"
    assert pid[7] == "1947" and pid[8] == "F"  # birth date: the year only
    obx = segments[6].split("|")
    assert "mild emphysema" in obx[5] and obx[2] == "TX"
    assert out.patient == patient_pseudonym("MRN-7734921")
    assert out.pseudonyms[patient_pseudonym("MRN-7734921")] == "MRN-7734921"


def test_hl7_dates_shift_with_the_longitudinal_option():
    out = message_deidentify(ORU, DeidProfile(options=frozenset({"retain-longitudinal-modified-dates"})))
    orc = out.message.split("\r")[4].split("|")
    assert orc[9] and orc[9] != "20241105101500" and orc[9].endswith("101500")


def test_fhir_patient_and_report():
    patient = {
        "resourceType": "Patient",
        "id": "pat-1",
        "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-7734921"}],
        "name": [{"family": "Zyxqual", "given": ["Brunhild"]}],
        "telecom": [{"system": "phone", "value": "555-201-3344"}],
        "address": [{"line": ["12 Elm Street"], "city": "Springfield"}],
        "birthDate": "1947-11-03",
        "gender": "female",
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">Brunhild Zyxqual</div>',
        },
    }
    out = resource_deidentify(patient, DeidProfile())
    dumped = json.dumps(out)
    for secret in ("Zyxqual", "Brunhild", "7734921", "Elm", "Springfield", "3344", "1947-11-03", "pat-1"):
        assert secret not in dumped, secret
    assert out["birthDate"] == "1947" and out["gender"] == "female"
    assert out["identifier"][0]["system"] == "urn:oid:1.2.3"
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"text": "CT chest"},
        "subject": {"reference": "Patient/pat-1", "display": "Brunhild Zyxqual"},
        "effectiveDateTime": "2024-11-05T10:15:00+01:00",
        "conclusion": "Brunhild Zyxqual has mild emphysema.",
    }
    shifted = resource_deidentify(
        report, DeidProfile(options=frozenset({"retain-longitudinal-modified-dates"}))
    )
    assert "Zyxqual" not in json.dumps(shifted) and "mild emphysema" in shifted["conclusion"]
    assert shifted["subject"]["reference"] == f"Patient/{out['id']}"  # references stay consistent
    assert shifted["effectiveDateTime"] != report["effectiveDateTime"]
    assert shifted["effectiveDateTime"].endswith("T10:15:00+01:00")


def test_formatting_escapes_survive_and_names_next_to_them_are_caught():
    # \.br\ line breaks and \X..\ hex escapes are read as text by Presidio (a name glued to a
    # formatting code is still a name) and come out as valid escapes, not \E\.br\E\.
    message = ORU.replace(
        "Brunhild Zyxqual (MRN 7734921), DOB 11/03/1947: mild emphysema.",
        "Findings:\\.br\\Brunhild Zyxqual\\.br\\mild emphysema \\T\\ no effusion.\\X0A\\End.",
    )
    out = message_deidentify(message, DeidProfile())
    obx = next(s for s in out.message.split("\r") if s.startswith("OBX")).split("|")[5]
    assert "Zyxqual" not in obx and "Brunhild" not in obx
    assert obx.startswith("Findings:\\.br\\") and "\\E\\" not in obx
    assert "mild emphysema \\T\\ no effusion.\\.br\\End." in obx
