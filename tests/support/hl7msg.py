"""HL7 v2 test messages built in code (no real patient data)."""

from __future__ import annotations


def message(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode()


def msh(control_id: str, message_type: str, version: str = "2.5.1", *, extra: str = "") -> str:
    return f"MSH|^~\\&|RIS|HOSP|FHIRAI|HOSP|20260315083000||{message_type}|{control_id}|P|{version}{extra}"


PID = "PID|1||MRN-4411^^^HOSP^MR~998877^^^SSA^SS||Examplo^Berta^M||19610704|F"


def adt(control_id: str = "ADT0001", event: str = "A01", pid: str = PID, version: str = "2.5.1") -> bytes:
    return message(
        msh(control_id, f"ADT^{event}^ADT_A01", version), f"EVN|{event}|20260315083000", pid, "PV1|1|O"
    )


def orm(control_id: str = "ORM0001", accession: str = "ACC-9001", pid: str = PID) -> bytes:
    return message(
        msh(control_id, "ORM^O01", "2.3"),
        pid,
        "ORC|NW|PL-77|FL-88",
        f"OBR|1|PL-77|FL-88|CTCHEST^CT Chest^L|||20260315083000|||||||||||{accession}",
    )


def oru(control_id: str = "ORU0001", accession: str = "ACC-9001") -> bytes:
    return message(
        msh(control_id, "ORU^R01^ORU_R01"),
        PID,
        f"OBR|1|PL-77|FL-88|CTCHEST^CT Chest^L|||20260315083000|||||||||||{accession}|||||||F",
        "OBX|1|TX|18782-3^Radiology Study observation^LN||Lungs clear \\T\\ no nodule.||||||F",
        "NTE|1||Compared with 2025 study.",
    )
