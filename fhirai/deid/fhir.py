"""FHIR R4 de-identification, element by element, on any resource (walked recursively):

identifier.value        -> the keyed pseudonym (system kept: which kind of identifier it was);
name, telecom, address, photo, contact, communication (persons), Reference.display,
                         HumanName/ContactPoint/Address anywhere -> removed;
birthDate, deceasedDateTime and dates of care -> the patient's date shift when the profile
                         retains longitudinal information; birthDate to the year otherwise;
text (narrative), conclusion, note.text, comment, description, valueString and other free text
                         -> through Presidio with the resource's own identifiers;
meta.source / meta.tag  -> kept; id -> a pseudonym (so references stay consistent).
"""

from __future__ import annotations

import html
import re
from datetime import date, timedelta
from typing import Any

from fhirai.deid.profile import DeidProfile, date_shift_days, patient_pseudonym, profile_current
from fhirai.deid.pseudonym import pseudonym
from fhirai.deid.text import Known, text_scrub

PERSON_ELEMENTS = {"name", "telecom", "address", "photo", "contact", "communication", "link"}
FREE_TEXT = {"conclusion", "comment", "description", "valueString", "text", "patientInstruction", "note"}
DATE_ELEMENTS = {
    "effectiveDateTime", "issued", "recorded", "authoredOn", "started", "occurrenceDateTime", "onsetDateTime",
    "abatementDateTime", "recordedDate", "date", "lastModified", "start", "end", "created", "deceasedDateTime",
}  # fmt: skip
_TAGS = re.compile(r"<[^>]+>")


def resource_deidentify(
    resource: dict[str, Any], profile: DeidProfile | None = None, *, known: Known | None = None
) -> dict[str, Any]:
    """A de-identified copy of `resource` by the rules above; `known`: identifiers of its context
    (e.g. the Patient a report is about) to look for in its free text besides its own."""
    profile = profile or profile_current()
    known = resource_known(resource) | (known or Known())
    patient = _patient_key(resource)
    shift = (
        date_shift_days(patient_pseudonym(patient))
        if patient and "retain-longitudinal-modified-dates" in profile.options
        else 0
    )
    return _walk(resource, known, shift, top=True)


def resource_known(resource: dict[str, Any]) -> Known:
    """The resource's own identifiers (names, identifier values, phones, addresses, birth date)."""
    names, ids, phones, addresses, dates = [], [], [], [], []

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        if "family" in node or "given" in node:
            names.append("^".join([node.get("family", ""), " ".join(node.get("given", []))]))
        if (
            isinstance(node.get("value"), str)
            and "system" in node
            and node.get("system") not in ("phone", "email")
        ):
            ids.append(node["value"])
        if node.get("system") in ("phone", "email", "fax") and node.get("value"):
            phones.append(node["value"])
        if "line" in node or "city" in node:
            addresses.extend([*node.get("line", []), node.get("city", ""), node.get("postalCode", "")])
        if isinstance(node.get("birthDate"), str):
            dates.append(node["birthDate"])
        for value in node.values():
            visit(value)

    visit(resource)
    return Known(
        names=tuple(n for n in names if n.strip("^ ")),
        identifiers=tuple(ids),
        phones=tuple(phones),
        addresses=tuple(a for a in addresses if a),
        dates=tuple(dates),
    )


def _patient_key(resource: dict[str, Any]) -> str:
    if resource.get("resourceType") == "Patient":
        idents = resource.get("identifier") or [{}]
        return str(idents[0].get("value", "")) or str(resource.get("id", ""))
    subject = resource.get("subject") or resource.get("patient") or {}
    ident = subject.get("identifier") or {}
    return str(ident.get("value") or subject.get("reference", ""))


def _walk(node: Any, known: Known, shift: int, *, top: bool = False) -> Any:
    if isinstance(node, list):
        return [_walk(n, known, shift) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for name, value in node.items():
        if name in PERSON_ELEMENTS and not (name == "link" and not top):
            continue
        if name == "display":
            continue
        if name == "id" and top:
            out[name] = pseudonym("fhir-id", f"{node.get('resourceType')}/{value}", length=32).lower()
        elif name == "identifier":
            out[name] = [_identifier(i) for i in value] if isinstance(value, list) else _identifier(value)
        elif name == "reference" and isinstance(value, str) and "/" in value and not value.startswith("urn:"):
            out[name] = reference_pseudonym(value)
        elif name == "birthDate":
            out[name] = _shift(value, shift) if shift else str(value)[:4]
        elif name in DATE_ELEMENTS and isinstance(value, str):
            shifted = _shift(value, shift) if shift else value
            if shifted:
                out[name] = shifted
        elif name == "text" and isinstance(value, dict) and "div" in value:
            out[name] = {**value, "div": _narrative(value["div"], known)}
        elif name in FREE_TEXT and isinstance(value, str):
            out[name] = text_scrub(value, known).text
        else:
            out[name] = _walk(value, known, shift)
    return out


def reference_pseudonym(reference: str) -> str:
    """A literal reference (Type/id or an absolute URL) as its de-identified form: Type/<keyed
    pseudonym of Type/id>, the same wherever it occurs; '' for no reference."""
    if "/" not in reference or reference.startswith("urn:"):
        return reference
    rtype, _, rid = reference.rpartition("/")
    rtype = rtype.rsplit("/", 1)[-1]
    return f"{rtype}/{pseudonym('fhir-id', rtype + '/' + rid, length=32).lower()}"


def _identifier(ident: Any) -> Any:
    if not isinstance(ident, dict) or not ident.get("value"):
        return ident
    kept = {k: v for k, v in ident.items() if k in ("system", "type", "use")}
    return {
        **kept,
        "value": pseudonym("identifier", f"{ident.get('system', '')}|{ident['value']}", prefix="I"),
    }


def _narrative(div: str, known: Known) -> str:
    text = html.unescape(_TAGS.sub(" ", div))
    cleaned = text_scrub(" ".join(text.split()), known).text
    return f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(cleaned)}</p></div>'


def _shift(value: Any, days: int) -> str:
    """A FHIR date/dateTime/instant moved by `days`, its precision and time kept."""
    text = str(value)
    if len(text) < 10:
        return text[:4]  # year or year-month: coarse enough to keep
    try:
        day = date.fromisoformat(text[:10]) + timedelta(days=days)
    except ValueError:
        return ""
    return day.isoformat() + text[10:]
