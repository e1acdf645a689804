"""HL7 v2 de-identification, field by field, on the message as sent (ER7): the message's own
delimiters and escape character are used, and everything not named here passes unchanged.

Rules (field numbers as in the standard; MSH-1 is the field separator):
  pseudonym  identifiers that link records: PID-2/3/18, PV1-19, ORC-2/3, OBR-2/3/18/19, the
             first component of each repetition only, so type/authority codes stay usable;
  remove     names, addresses, telecoms, other IDs, persons (PID-4..6,9,11..14,17,19..21,23,26;
             NK1-2..33; PV1-7..9,17,52; ORC-10..12,14,19,21..24; OBR-16,17,28,32..35; OBX-16);
  date       dates of care and birth (PID-7/29, PV1-44/45, ORC-9, OBR-6..8/22, OBX-14/19): the
             patient's date shift when the profile retains longitudinal information, else the
             year only for birth dates and empty for the others;
  clean      free text (OBX-5 of TX/FT/ST values, NTE-3) through Presidio with the message's own
             identifiers (fhirai.deid.text)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fhirai.deid.profile import DeidProfile, date_shift, date_shift_days, patient_pseudonym, profile_current
from fhirai.deid.pseudonym import pseudonym
from fhirai.deid.text import Known, text_scrub

PSEUDONYM = {"PID": {2, 3, 18}, "PV1": {19}, "ORC": {2, 3}, "OBR": {2, 3, 18, 19}}
REMOVE = {
    "PID": {4, 5, 6, 9, 10, 11, 12, 13, 14, 17, 19, 20, 21, 22, 23, 26},
    "NK1": set(range(2, 34)) - {3},
    "PV1": {7, 8, 9, 17, 52},
    "ORC": {10, 11, 12, 14, 19, 21, 22, 23, 24},
    "OBR": {16, 17, 28, 32, 33, 34, 35},
    "OBX": {16},
    "IN1": set(range(2, 50)),
    "GT1": set(range(2, 58)),
}
DATES = {"PID": {7, 29}, "PV1": {44, 45}, "ORC": {9}, "OBR": {6, 7, 8, 22}, "OBX": {14, 19}}
TEXT_TYPES = {"TX", "FT", "ST"}


@dataclass
class Hl7Deidentified:
    message: str
    patient: str = ""  # the patient's pseudonym
    pseudonyms: dict[str, str] = field(default_factory=dict)  # pseudonym -> original


@dataclass
class _Delims:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


def message_deidentify(message: str, profile: DeidProfile | None = None) -> Hl7Deidentified:
    """The message with the rules above applied; segments stay in order, separators as received."""
    profile = profile or profile_current()
    newline = "\r" if "\r" in message else "\n"
    segments = [s for s in message.replace("\r\n", "\r").split(newline) if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise ValueError("not an HL7 v2 message: it must start with MSH and its delimiters")
    d = _Delims(segments[0][3], *segments[0][4:8].ljust(4, "&"))
    rows = [s.split(d.field) for s in segments]
    known = message_known(rows, d)
    mrn = next((_first(r[3], d) for r in rows if r[0] == "PID" and len(r) > 3 and r[3]), "")
    out = Hl7Deidentified("", patient=patient_pseudonym(mrn) if mrn else "")
    shift = (
        date_shift_days(out.patient)
        if out.patient and "retain-longitudinal-modified-dates" in profile.options
        else 0
    )
    for row in rows:
        name = row[0]
        for index in range(1, len(row)):
            number = index + 1 if name == "MSH" else index
            value = row[index]
            if not value or (name == "MSH" and number <= 2):
                continue
            if number in REMOVE.get(name, ()):
                row[index] = ""
            elif number in PSEUDONYM.get(name, ()):
                row[index] = _pseudonymize(value, d, out, "patient-id" if name == "PID" else "order")
            elif number in DATES.get(name, ()):
                row[index] = _date(value, d, shift, birth=(name, number) == ("PID", 7))
            elif (name == "OBX" and number == 5 and len(row) > 2 and row[2] in TEXT_TYPES) or (
                name == "NTE" and number == 3
            ):
                row[index] = _clean(value, d, known)
    out.message = newline.join(d.field.join(r) for r in rows) + newline
    return out


def message_known(rows: list[list[str]], d: _Delims) -> Known:
    """The message's own identifiers, from its structured fields, to look for in its free text."""

    def get(segment: str, *numbers: int) -> list[str]:
        values = []
        for row in rows:
            if row[0] != segment:
                continue
            for number in numbers:
                if number < len(row) and row[number]:
                    values += [_unescape(r, d) for r in row[number].split(d.repetition)]
        return values

    def xpn(values: list[str]) -> list[str]:  # names: Family^Given^Middle
        return [d.component.join(v.split(d.component)[:3]) for v in values if v.strip(d.component)]

    def xcn(values: list[str]) -> list[str]:  # persons: ID^Family^Given
        return [d.component.join(v.split(d.component)[1:4]) for v in values if len(v.split(d.component)) > 1]

    ids = [
        v.split(d.component)[0]
        for v in get("PID", 2, 3, 4, 18, 19) + get("PV1", 19) + get("OBR", 2, 3, 18, 19)
    ]
    return Known(
        names=tuple(xpn(get("PID", 5, 6, 9) + get("NK1", 2)) + xcn(get("PV1", 7, 8, 9, 17) + get("ORC", 10, 11, 12) + get("OBR", 16, 28, 32))),
        identifiers=tuple(i for i in ids if i),
        phones=tuple(v.split(d.component)[0] for v in get("PID", 13, 14) + get("NK1", 5, 6) if v),
        addresses=tuple(
            p for v in get("PID", 11) + get("NK1", 4) for p in v.split(d.component)[:3] if p.strip()
        ),
        dates=tuple(v[:8] for v in get("PID", 7) if len(v) >= 8),
    )  # fmt: skip


def _first(value: str, d: _Delims) -> str:
    return value.split(d.repetition)[0].split(d.component)[0]


def _pseudonymize(value: str, d: _Delims, out: Hl7Deidentified, kind: str) -> str:
    """Each repetition's first component becomes its keyed pseudonym; the other components
    (check digit, authority, type code) stay so the field keeps its meaning."""
    reps = []
    for rep in value.split(d.repetition):
        parts = rep.split(d.component)
        if parts[0]:
            original = _unescape(parts[0], d)
            alias = (
                patient_pseudonym(original) if kind == "patient-id" else pseudonym(kind, original, prefix="O")
            )
            out.pseudonyms[alias] = original
            parts[0] = alias
        reps.append(d.component.join(parts))
    return d.repetition.join(reps)


def _date(value: str, d: _Delims, shift: int, *, birth: bool) -> str:
    """A DTM moved by the patient's shift (precision kept), or reduced: birth to the year, others
    removed."""
    text = value.split(d.component)[0]
    if shift and len(text) >= 8 and text[:8].isdigit():
        return str(date_shift(text, "DT", shift))
    if birth and len(text) >= 4 and text[:4].isdigit():
        return text[:4]
    return ""


def _clean(value: str, d: _Delims, known: Known) -> str:
    """Free text through Presidio as the reader would see it: formatting escapes become line
    breaks (so a name is never glued to the next line's words) and hex escapes characters; the
    result is escaped again, line breaks as \\.br\\ (HL7 v2.5.1 2.7.6)."""
    reps = []
    for rep in value.split(d.repetition):
        scrubbed = text_scrub(_text_unescape(rep, d), known).text
        reps.append(_escape(scrubbed, d).replace("\n", f"{d.escape}.br{d.escape}"))
    return d.repetition.join(reps)


def _text_unescape(value: str, d: _Delims) -> str:
    """A TX/FT/ST value as text: delimiter escapes decoded, \\.br\\ / \\.sp n\\ / \\.ce\\ as line
    breaks, \\Xhh..\\ as the bytes' characters (UTF-8, else Latin-1), other formatting (\\H\\,
    \\N\\, \\.in\\, \\.ti\\, \\.fi\\, \\.nf\\, \\Z..\\) dropped; a lone escape character stays."""
    e = d.escape
    simple = {"F": d.field, "S": d.component, "R": d.repetition, "T": d.subcomponent, "E": e}
    out: list[str] = []
    i = 0
    while i < len(value):
        end = value.find(e, i + 1) if value[i] == e else -1
        if end < 0:
            out.append(value[i])
            i += 1
            continue
        code = value[i + 1 : end]
        if code in simple:
            out.append(simple[code])
        elif code == ".br" or code == ".ce":
            out.append("\n")
        elif code.startswith(".sp"):
            count = code[3:].strip()
            out.append("\n" * (int(count) if count.isdigit() else 1))
        elif code[:1] == "X" and len(code) > 1 and len(code) % 2 == 1:
            try:
                raw = bytes.fromhex(code[1:])
            except ValueError:
                out.append(value[i : end + 1])
            else:
                try:
                    out.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append(raw.decode("latin-1"))
        elif code in ("H", "N") or code[:1] in (".", "Z", "C", "M"):
            pass  # formatting and character-set switches: nothing a reader needs
        else:
            out.append(value[i : end + 1])
        i = end + 1
    return "".join(out)


def _unescape(value: str, d: _Delims) -> str:
    e = d.escape
    return (
        value.replace(f"{e}F{e}", d.field)
        .replace(f"{e}S{e}", d.component)
        .replace(f"{e}R{e}", d.repetition)
        .replace(f"{e}T{e}", d.subcomponent)
        .replace(f"{e}E{e}", e)
    )


def _escape(value: str, d: _Delims) -> str:
    e = d.escape
    return (
        value.replace(e, f"{e}E{e}")
        .replace(d.field, f"{e}F{e}")
        .replace(d.component, f"{e}S{e}")
        .replace(d.repetition, f"{e}R{e}")
        .replace(d.subcomponent, f"{e}T{e}")
    )
