from __future__ import annotations

import pytest

from fhirai.context.messages import messages_process
from fhirai.context.models import ClinicalReport, Order, Patient
from fhirai.ingest.messages import Inbound, messages_receive
from fhirai.ingest.models import Message
from fhirai.results.models import FhirResource
from fhirai.results.store import resource_read
from fhirai.routing.jobs import job_record_result
from integrations.hl7.handlers import inbound_from
from tests.support import pipeline
from tests.support.hl7msg import PID, adt, message, msh, orm, oru
from tests.support.phantom import ct_phantom

pytestmark = pytest.mark.django_db


def _receive(*raws: bytes) -> list[int]:
    stored = messages_receive([inbound_from(raw, "127.0.0.1:1")[1] for raw in raws])
    return [s.message_id for s in stored]


def _process(ids: list[int]) -> None:
    messages_process(up_to=max(ids))


def test_adt_creates_then_updates_the_patient_in_message_order():
    ids = _receive(
        adt("A-1"), adt("A-2", "A08", pid="PID|1||MRN-4411^^^HOSP^MR||Examplo^Berta^Maria||19610704|F")
    )
    messages_process(up_to=ids[0])  # a worker that got only the first batch
    _process(ids)
    patient = Patient.objects.get()
    assert (patient.mrn, patient.family, patient.given, patient.birth_date, patient.sex) == (
        "MRN-4411",
        "Examplo",
        "Berta Maria",
        "1961-07-04",
        "F",
    )
    resource = resource_read("Patient", patient.resource_id).content
    assert resource["birthDate"] == "1961-07-04" and resource["gender"] == "female"
    assert resource["identifier"][0]["value"] == "MRN-4411"
    assert set(Message.objects.values_list("state", flat=True)) == {"processed"}


def test_a40_merges_and_later_orders_go_to_the_survivor():
    old_pid = "PID|1||MRN-OLD^^^HOSP^MR||Examplo^Berta||19610704|F"
    merge = message(msh("M-1", "ADT^A40^ADT_A39"), "EVN|A40", PID, "MRG|MRN-OLD^^^HOSP^MR")
    _process(_receive(adt("A-1"), adt("A-2", pid=old_pid), merge, orm("O-1", pid=old_pid)))
    survivor, old = Patient.objects.get(mrn="MRN-4411"), Patient.objects.get(mrn="MRN-OLD")
    assert old.merged_into == survivor
    assert Order.objects.get().patient == survivor
    content = resource_read("Patient", old.resource_id).content
    assert content["active"] is False and content["link"][0]["type"] == "replaced-by"


def test_orm_creates_the_order_as_a_service_request():
    _process(_receive(orm("O-1")))
    order = Order.objects.get()
    assert (order.accession, order.placer_number, order.filler_number, order.procedure_code) == (
        "ACC-9001",
        "PL-77",
        "FL-88",
        "CTCHEST",
    )
    sr = resource_read("ServiceRequest", order.resource_id).content
    assert sr["intent"] == "order" and sr["status"] == "active"
    assert {i["type"]["coding"][0]["code"]: i["value"] for i in sr["identifier"]} == {
        "PLAC": "PL-77",
        "FILL": "FL-88",
        "ACSN": "ACC-9001",
    }
    assert sr["subject"]["reference"] == f"Patient/{order.patient.resource_id}"


def test_oru_text_is_kept_unescaped_for_nlp():
    _process(_receive(oru("R-1")))
    report = ClinicalReport.objects.get()
    assert report.text.splitlines() == ["Lungs clear & no nodule.", "Compared with 2025 study."]
    assert report.accession == "ACC-9001" and report.status == "F"


def test_a_message_that_cannot_be_read_fails_visibly():
    broken = Inbound(
        raw=message(msh("B-1", "ORM^O01"), PID),
        sender="RIS^HOSP",
        control_id="B-1",
        message_type="ORM^O01",
        version="2.5.1",
        codec="utf-8",
    )
    _process([s.message_id for s in messages_receive([broken])])
    message_row = Message.objects.get()
    assert message_row.state == "failed" and "OBR" in message_row.error


@pytest.mark.parametrize("order_first", [True, False])
def test_report_subject_and_based_on_point_at_the_patient_and_order(settings, blob_dir, order_first):
    ph = ct_phantom(
        slices=8, size=48, seed=41, identity={"AccessionNumber": "ACC-9001", "PatientID": "MRN-4411"}
    )
    if order_first:
        _process(_receive(adt("A-1"), orm("O-1")))
        pipeline.run_all(ph, settings)
    else:
        study = pipeline.receive(ph)
        _process(_receive(adt("A-1"), orm("O-1")))
        job = pipeline.complete_and_deidentify(study, settings)
        job_record_result(job.pk, pipeline.infer(job))
    report = FhirResource.objects.get(resource_type="DiagnosticReport").content
    patient, order = Patient.objects.get(), Order.objects.get()
    assert report["subject"]["reference"] == f"Patient/{patient.resource_id}"
    assert report["basedOn"][0]["reference"] == f"ServiceRequest/{order.resource_id}"
    assert report["basedOn"][0]["identifier"]["value"] == "ACC-9001"


def test_declared_latin1_names_are_read_right():
    segments = [
        msh("L-1", "ADT^A01^ADT_A01", extra="||||||8859/1"),
        "EVN|A01",
        "PID|1||MRN-77^^^HOSP^MR||M\xfcller^J\xfcrgen||19500101|M",
    ]
    _process(_receive(("\r".join(segments) + "\r").encode("latin-1")))
    assert (Patient.objects.get().family, Patient.objects.get().given) == ("M\xfcller", "J\xfcrgen")


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"])
def test_adt_is_read_in_every_supported_version(version):
    _process(_receive(adt(f"V-{version}", version=version)))
    assert Patient.objects.get().family == "Examplo"
    assert Message.objects.get().state == "processed"


def test_an_order_arriving_after_the_report_amends_it_with_based_on(settings, blob_dir):
    ph = ct_phantom(
        slices=8, size=48, seed=42, identity={"AccessionNumber": "ACC-9001", "PatientID": "MRN-4411"}
    )
    pipeline.run_all(ph, settings)
    assert "basedOn" not in FhirResource.objects.get(resource_type="DiagnosticReport").content
    _process(_receive(adt("A-1"), orm("O-1")))
    row = FhirResource.objects.get(resource_type="DiagnosticReport")
    assert row.version_id == 2
    assert row.content["basedOn"][0]["reference"] == f"ServiceRequest/{Order.objects.get().resource_id}"
    assert row.content["subject"]["reference"] == f"Patient/{Patient.objects.get().resource_id}"


def test_omi_takes_the_accession_from_ipc():
    omi = message(
        msh("OMI-1", "OMI^O23^OMI_O23"),
        PID,
        "ORC|NW|PL-5|FL-6",
        "TQ1|1",
        "OBR|1|PL-5|FL-6|MRCHEST^MR Chest^L",
        "IPC|ACC-IPC-1|REQ-1|1.2.3.4.5|SPS-1|MR",
    )
    _process(_receive(omi))
    order = Order.objects.get()
    assert (order.accession, order.placer_number, order.procedure_code) == ("ACC-IPC-1", "PL-5", "MRCHEST")


def test_oru_text_is_deidentified_for_the_nlp_stage(settings, blob_dir):
    from fhirai import blobs
    from fhirai.context.reports import clinical_report_deidentify
    from fhirai.deid.models import VaultEntry

    _process(_receive(oru("R-2")))
    report = ClinicalReport.objects.get()
    key = clinical_report_deidentify(report.pk)
    assert key.startswith("deid/") and clinical_report_deidentify(report.pk) == key  # once
    text = blobs.get(key).decode()
    assert text.startswith("MSH|") and "Lungs clear" in text
    raw = bytes(Message.objects.get().raw).decode()
    pid = next(line for line in raw.split("\r") if line.startswith("PID"))
    for value in pid.split("|")[3].split("^")[:1] + pid.split("|")[5].split("^")[:2]:
        if value:
            assert value not in text, value
    assert VaultEntry.objects.filter(kind="patient-id").exists()
