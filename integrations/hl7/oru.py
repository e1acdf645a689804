"""Results out as ORU^R01 (HL7 v2.5.1 ch. 7.3.1) over MLLP to the EHR peers in FHIRAI_HL7_PEERS
(or as changed in the console: fhirai.results.destinations).

MSH (fhirai as sender, UTF-8 declared in MSH-18, original acknowledgment mode), PID (the patient's
MRN with its assigning authority, name, birth date, sex), ORC|RE with the order's placer/filler
numbers, OBR (procedure, placer/filler, OBR-18 accession, OBR-22 issued, OBR-25 result status F or
C for an amended report), then one OBX per Observation with its value type (NM with UCUM units in
OBX-6, ST/TX for text, CWE for a coded finding such as SNOMED CT Present/Absent) and a TX OBX for
the conclusion. An AI-generated report carries an NTE after OBR saying it is not yet reviewed by
a clinician, and OBR-25/OBX-11 = P while the site keeps AI reports preliminary. The peer's ACK decides: AA/CA delivered,
AE/AR/CE/CR refused (a visible failure), no answer retried."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from django.conf import settings

from fhirai.errors import Unavailable
from fhirai.results.destinations import hl7_peer
from fhirai.results.package import ObservationPart, ReportPackage
from fhirai.results.report import AI_NOTE
from fhirai.results.writeback import Outcome
from integrations.hl7 import ack
from integrations.hl7.ack import escape as e
from integrations.hl7.mllp import exchange

# FHIR code systems -> HL7 table 0396 coding system names; anything else is a local system (99zzz).
CODING_SYSTEMS = {
    "http://loinc.org": "LN",
    "http://snomed.info/sct": "SCT",
    "http://unitsofmeasure.org": "UCUM",
    "http://www.radlex.org": "RADLEX",
    "http://dicom.nema.org/resources/ontology/DCM": "DCM",
}
LOCAL_SYSTEM = "99FHIRAI"
RESULT_STATUS = {"final": "F", "amended": "C", "corrected": "C", "preliminary": "P", "cancelled": "X"}


def _ts(iso: str) -> str:
    """FHIR dateTime -> HL7 DTM in the site zone (YYYYMMDDHHMMSS+ZZZZ)."""
    if not iso:
        return ""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(settings.TIME_ZONE))
    return moment.astimezone(ZoneInfo(settings.TIME_ZONE)).strftime("%Y%m%d%H%M%S%z")


def _cwe(code: str, text: str, system: str) -> str:
    """CWE code^text^system; a FHIR system URI maps to its table 0396 name, an HL7 name passes as is."""
    if ":" in system or "/" in system:
        system = CODING_SYSTEMS.get(system, LOCAL_SYSTEM)
    return "^".join([e(code), e(text), system])


def _value(value: float | str) -> tuple[str, str]:
    """OBX-2 and OBX-5: NM for numbers; ST for a short line; TX with \\.br\\ line breaks otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "NM", f"{value:g}"
    lines = str(value).splitlines() or [""]
    if len(lines) == 1 and len(lines[0]) <= 199:
        return "ST", e(lines[0])
    return "TX", "\\.br\\".join(e(line) for line in lines)


def oru_build(package: ReportPackage, *, peer: str) -> str:
    """The ORU^R01 message for one report."""
    p, o = package.patient, package.order
    status = RESULT_STATUS.get(package.status, "F")
    now = datetime.now(ZoneInfo(settings.TIME_ZONE)).strftime("%Y%m%d%H%M%S%z")
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                e(settings.FHIRAI_HL7_APPLICATION),
                e(settings.FHIRAI_HL7_FACILITY),
                e(peer),
                "",
                now,
                "",
                "ORU^R01^ORU_R01",
                package.message_id or ack.control_id(),
                "P",
                "2.5.1",
                "",
                "",
                "",
                "",
                "",
                "UNICODE UTF-8",
            ]
        ),
        "|".join(
            [
                "PID",
                "1",
                "",
                f"{e(p.mrn)}^^^{e(p.mrn_authority)}^MR",
                "",
                f"{e(p.family)}^{e(p.given)}",
                "",
                p.birth_date,
                p.sex,
            ]
        ),
        "|".join(["ORC", "RE", e(o.placer_number), e(o.filler_number)]),
        "|".join(
            [
                "OBR",
                "1",
                e(o.placer_number),
                e(o.filler_number),
                _cwe(
                    o.procedure_code or package.code,
                    o.procedure_text or package.code_display,
                    o.procedure_system or package.code_system,
                ),
                "",
                "",
                _ts(package.effective),
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                e(o.accession),
                "",
                "",
                "",
                _ts(package.issued),
                "",
                "",
                status,
            ]
        ),
    ]
    if package.ai_generated:
        # IHE AI Results: the receiver is told the result is machine-generated and unreviewed
        # (and OBR-25/OBX-11 say P while the site's policy keeps AI reports preliminary).
        segments.append(f"NTE|1|L|{e(AI_NOTE)}|RE^Remark^HL70364")
    rows = [
        (obs.code, obs.display, obs.system, obs, obs.unit, RESULT_STATUS.get(obs.status, status))
        for obs in package.observations
    ]
    if package.conclusion:
        rows.append(("conclusion", "Conclusion", "", package.conclusion, "", status))
    for n, (code, display, system, value, unit, obs_status) in enumerate(rows, start=1):
        if isinstance(value, ObservationPart) and value.coded:
            value_type = "CWE"
            text = _cwe(
                value.coded.get("code", ""), value.coded.get("display", ""), value.coded.get("system", "")
            )
        else:
            value_type, text = _value(value.value if isinstance(value, ObservationPart) else value)
        units = f"{e(unit)}^{e(unit)}^UCUM" if unit else ""
        segments.append(
            "|".join(
                [
                    "OBX",
                    str(n),
                    value_type,
                    _cwe(code, display, system),
                    "",
                    text,
                    units,
                    "",
                    "",
                    "",
                    "",
                    obs_status,
                    "",
                    "",
                    _ts(package.effective),
                ]
            )
        )
    return "\r".join(segments) + "\r"


def oru_send(peer: str, package: ReportPackage) -> Outcome:
    """Send the report to peer NAME; AA/CA means delivered. Unavailable when it cannot be reached."""
    host, port = hl7_peer(peer)
    message = oru_build(package, peer=peer)
    try:
        reply = exchange(host, port, message.encode("utf-8"), timeout=settings.FHIRAI_HL7_TIMEOUT)
    except OSError as exc:
        raise Unavailable(f"HL7 peer {peer} unreachable: {type(exc).__name__}") from exc
    text = reply.decode("utf-8", errors="replace")
    msa = next(
        (
            seg.split(text[3] if len(text) > 3 else "|")
            for seg in text.replace("\n", "\r").split("\r")
            if seg.startswith("MSA")
        ),
        [],
    )
    code = msa[1] if len(msa) > 1 else ""
    return Outcome(
        delivered=code in (ack.AA, ack.CA),
        status=None,
        reply=text.replace("\r", "\n").strip(),
        summary="|".join(msa[:3]) or "no MSA in the reply",
    )
