"""Reads a committed HL7 v2 message with hl7apy into the domain's MessageFacts.

Fields are taken by position (HL7 v2.3-2.8 agree on every position used here) and split with the
message's own delimiters, then unescaped (ch. 2.7), so data types that changed between versions
(CE/CWE, XPN) read the same. Positions: PID-3 patient identifiers (CX: ID^^^authority^type), PID-5
name (family^given), PID-7 birth date, PID-8 sex; MRG-1 prior identifiers (A40); ORC-1 order
control, ORC-5 order status; OBR-2 placer, OBR-3 filler, OBR-4 procedure, OBR-18 accession (IHE
Radiology SWF mapping; OMI^O23 carries it in IPC-1), OBR-25 result status; OBX-5 and NTE-3 text."""

from __future__ import annotations

from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from fhirai.context.facts import MessageFacts, OrderFacts, PatientFacts, ReportFacts
from integrations.hl7.msh import unescape

KINDS = {
    "ADT^A01": "patient",
    "ADT^A04": "patient",
    "ADT^A08": "patient",
    "ADT^A40": "merge",
    "ORM^O01": "order",
    "OMI^O23": "order",
    "ORU^R01": "report",
}


class _Segments:
    def __init__(self, text: str) -> None:
        try:
            self.message = parse_message(text, find_groups=False)
        except HL7apyException as exc:
            raise ValueError(f"HL7 structure error: {type(exc).__name__}") from None
        except (ValueError, IndexError, KeyError, AttributeError) as exc:
            raise ValueError(f"cannot parse the message: {type(exc).__name__}") from None
        self.field_sep = text[3]
        self.encoding = text[4:8] if text[8:9] == self.field_sep else text[4:9]

    def all(self, name: str) -> list[object]:
        try:
            return list(self.message.children.get(name) or [])
        except HL7apyException:  # a segment this version does not define (IPC before v2.5)
            return []

    def first(self, name: str) -> object | None:
        found = self.all(name)
        return found[0] if found else None

    def field(self, segment: object | None, n: int) -> str:
        """The raw text of field n (all repetitions), '' when absent."""
        if segment is None:
            return ""
        er7 = segment.to_er7()  # type: ignore[attr-defined]
        parts = er7.split(self.field_sep)
        return parts[n] if len(parts) > n else ""

    def repetitions(self, segment: object | None, n: int) -> list[list[str]]:
        """Field n as repetitions of unescaped components."""
        raw = self.field(segment, n)
        if not raw:
            return []
        return [
            [unescape(c, self.field_sep, self.encoding) for c in rep.split(self.encoding[0])]
            for rep in raw.split(self.encoding[1])
        ]

    def component(self, segment: object | None, n: int, k: int = 0) -> str:
        reps = self.repetitions(segment, n)
        return reps[0][k].strip() if reps and len(reps[0]) > k else ""


def read_message(raw: bytes, *, codec: str, message_type: str) -> MessageFacts:
    """The meaning of one message; ValueError (without patient data) when it cannot be read."""
    text = raw.decode(codec).replace("\r\n", "\r").replace("\n", "\r").strip("\r\x0b\x1c")
    kind = KINDS.get(message_type)
    if kind is None:
        raise ValueError(f"{message_type} is not handled")
    seg = _Segments(text)
    pid = seg.first("PID")
    facts = MessageFacts(kind=kind, patient=_patient(seg, pid, 3) if pid is not None else None)
    pd1 = seg.first("PD1")
    if facts.patient is not None and pd1 is not None:
        # PD1-12 Protection Indicator (HL7 table 0136): Y, the patient's data is to be protected
        # (fhirai: opted out of AI processing); N, it is not; empty, the message does not say.
        flag = seg.component(pd1, 12).upper()[:1]
        facts.patient.protection = flag if flag in ("Y", "N") else ""
    if kind == "merge":
        facts.prior_patients = [
            _identifier_patient(rep)
            for mrg in seg.all("MRG")
            for rep in seg.repetitions(mrg, 1)
            if rep and rep[0]
        ]
    elif kind == "order":
        orc, obr = seg.first("ORC"), seg.first("OBR")
        if obr is None:
            raise ValueError("the order has no OBR segment")
        accession = seg.component(seg.first("IPC"), 1) or seg.component(obr, 18)
        facts.order = OrderFacts(
            accession=accession,
            placer_number=seg.component(obr, 2) or seg.component(orc, 2),
            filler_number=seg.component(obr, 3) or seg.component(orc, 3),
            procedure_code=seg.component(obr, 4, 0),
            procedure_text=seg.component(obr, 4, 1),
            procedure_system=seg.component(obr, 4, 2),
            control=seg.component(orc, 1).upper(),
            status=seg.component(orc, 5).upper(),
        )
    elif kind == "report":
        obr = seg.first("OBR")
        lines = [" ".join(c for rep in seg.repetitions(obx, 5) for c in rep if c) for obx in seg.all("OBX")]
        lines += [" ".join(c for rep in seg.repetitions(nte, 3) for c in rep if c) for nte in seg.all("NTE")]
        facts.report = ReportFacts(
            accession=seg.component(obr, 18),
            placer_number=seg.component(obr, 2),
            filler_number=seg.component(obr, 3),
            status=seg.component(obr, 25),
            text="\n".join(line for line in lines if line),
        )
    return facts


def _patient(seg: _Segments, pid: object, n: int) -> PatientFacts:
    reps = [r for r in seg.repetitions(pid, n) if r and r[0]]
    mr = next((r for r in reps if len(r) > 4 and r[4].upper() == "MR"), reps[0] if reps else [""])
    patient = _identifier_patient(mr)
    name = seg.repetitions(pid, 5)
    if name:
        patient.family = name[0][0]
        patient.given = " ".join(p for p in name[0][1:3] if p)
    patient.birth_date = _date(seg.component(pid, 7))
    patient.sex = seg.component(pid, 8).upper()[:1]
    return patient


def _identifier_patient(cx: list[str]) -> PatientFacts:
    authority = cx[3].split("&")[0] if len(cx) > 3 else ""
    return PatientFacts(mrn=cx[0].strip(), mrn_authority=authority.strip())


def _date(value: str) -> str:
    """HL7 DT/DTM to FHIR date: YYYY[MM[DD]] -> YYYY[-MM[-DD]]."""
    digits = value[:8]
    if not digits.isdigit() or len(digits) not in (4, 6, 8):
        return ""
    return "-".join(p for p in (digits[:4], digits[4:6], digits[6:8]) if p)
