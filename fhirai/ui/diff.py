"""What de-identification changed, element by element, for the console's item page.

An operator checks a de-identified copy by reading it beside the original: one row per DICOM
element (file meta included, sequences item by item, private tags named by their creator), HL7 v2
field or FHIR JSON leaf, each marked kept, replaced, removed or added. Rows hold plain text (the
template escapes it) and are built in memory only: nothing here stores or logs a value (PHI).
A DICOM header may carry anything a modality wrote, so the DICOM diff never raises on a bad value
or an undecodable character set: it shows what it can.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, private_dictionary_description
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from fhirai import blobs
from fhirai.quiet import pydicom_quiet

if TYPE_CHECKING:
    from fhirai.context.models import ClinicalReport
    from fhirai.ingest.models import Instance, Message

KEPT, REPLACED, REMOVED, ADDED = "kept", "replaced", "removed", "added"
PENDING = "pending"  # no de-identified copy yet: the raw side alone
WITHHELD = "withheld"  # the instance was kept from the inference tier (burned-in text risk)
UNAVAILABLE = "unavailable"  # the de-identified side could not be read or made
TEXT_LIMIT = 120
_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_BULK_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010, 0x54001010, 0x54000100}  # pixel, waveform data
_BULK_ALWAYS_BYTES = 64  # longer binary values are summarised even outside the bulk tags


@dataclass(frozen=True)
class DiffRow:
    """One element, field or leaf on both sides. `change`: kept | replaced | removed | added, or
    pending / withheld / unavailable when there is no de-identified side to compare with."""

    path: str
    name: str
    vr: str
    raw: str
    deid: str
    change: str


@dataclass(frozen=True)
class _Leaf:
    path: str
    name: str
    vr: str
    text: str
    key: tuple[int, ...] = ()  # DICOM: tags and item indices down to the element, for tag order


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pair(raw: list[_Leaf], deid: list[_Leaf]) -> list[tuple[_Leaf | None, _Leaf | None]]:
    """Both sides' leaves matched by path, in the raw side's order with the de-identified side's
    own leaves slotted in after the leaf they follow there."""
    theirs = {leaf.path: leaf for leaf in deid}
    order: list[str] = [leaf.path for leaf in raw]
    position = {path: i for i, path in enumerate(order)}
    inserted: list[tuple[int, int, str]] = []  # (after raw index, sequence, path)
    after = -1
    for seq, leaf in enumerate(deid):
        if leaf.path in position:
            after = position[leaf.path]
        else:
            inserted.append((after, seq, leaf.path))
    ours = {leaf.path: leaf for leaf in raw}
    keyed = [((i, 0, 0), path) for i, path in enumerate(order)]
    keyed += [((after, 1, seq), path) for after, seq, path in inserted]
    return [(ours.get(path), theirs.get(path)) for _, path in sorted(keyed)]


def _rows(pairs: Iterable[tuple[_Leaf | None, _Leaf | None]], limit: int) -> list[DiffRow]:
    rows = []
    for mine, theirs in pairs:
        some = mine or theirs
        assert some is not None  # nosec B101  # narrows the type for mypy; under -O the next line fails the same way
        raw, deid = (mine.text if mine else ""), (theirs.text if theirs else "")
        if mine is None:
            change = ADDED
        elif theirs is None:
            change = REMOVED
        else:
            change = KEPT if raw == deid else REPLACED
        rows.append(DiffRow(some.path, some.name, some.vr, _clip(raw, limit), _clip(deid, limit), change))
    return rows


def _one_sided(leaves: Iterable[_Leaf], change: str, limit: int) -> list[DiffRow]:
    return [DiffRow(leaf.path, leaf.name, leaf.vr, _clip(leaf.text, limit), "", change) for leaf in leaves]


# DICOM ------------------------------------------------------------------------------------------


def dicom_diff(raw: Dataset, deid: Dataset, *, limit: int = TEXT_LIMIT) -> list[DiffRow]:
    """Every element of both datasets (file meta first, then by tag; sequence items recursed),
    with values as text cut to `limit` characters and bulk data as its length and digest."""
    with pydicom_quiet():
        mine = {leaf.path: leaf for leaf in _dicom_leaves(raw)}
        theirs = {leaf.path: leaf for leaf in _dicom_leaves(deid)}
    keys = {leaf.path: leaf.key for leaf in (*theirs.values(), *mine.values())}
    order = sorted(keys, key=lambda path: keys[path])
    return _rows(((mine.get(path), theirs.get(path)) for path in order), limit)


def _dicom_leaves(ds: Dataset) -> Iterator[_Leaf]:
    meta = getattr(ds, "file_meta", None)
    if isinstance(meta, Dataset):
        yield from _walk_dataset(meta, "", ())
    yield from _walk_dataset(ds, "", ())


def _walk_dataset(ds: Dataset, prefix: str, above: tuple[int, ...], depth: int = 0) -> Iterator[_Leaf]:
    try:
        tags = sorted(ds.keys())
    except Exception:  # noqa: BLE001 - a damaged dataset still shows what can be read
        return
    for tag in tags:
        path, key = f"{prefix}{_tag_text(tag)}", (*above, int(tag))
        try:
            elem = ds[tag]
        except Exception:  # noqa: BLE001 - a value that will not convert is shown raw
            yield _raw_leaf(ds, tag, path, key)
            continue
        name = _name(ds, tag)
        vr = str(elem.VR or "")
        if vr == "SQ":
            items = _safe_items(elem.value)
            yield _Leaf(path, name, vr, f"<{len(items)} item{'s' if len(items) != 1 else ''}>", key)
            if depth < 16:
                for index, item in enumerate(items):
                    if isinstance(item, Dataset):
                        yield from _walk_dataset(item, f"{path}[{index}] > ", (*key, index), depth + 1)
            continue
        yield _Leaf(path, name, vr, _value_text(tag, vr, elem.value), key)


def _safe_items(value: object) -> list[Any]:
    try:
        return list(value or [])  # type: ignore[call-overload]
    except Exception:  # noqa: BLE001
        return []


def _raw_leaf(ds: Dataset, tag: BaseTag, path: str, key: tuple[int, ...]) -> _Leaf:
    try:
        raw = ds.get_item(tag)
        value = getattr(raw, "value", None)
        vr = str(getattr(raw, "VR", "") or _dictionary_vr(tag))
        text = _bytes_text(tag, value, vr) if isinstance(value, bytes) else "<unreadable value>"
    except Exception:  # noqa: BLE001
        vr, text = _dictionary_vr(tag), "<unreadable value>"
    return _Leaf(path, _name(ds, tag), vr, text, key)


def _tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return str(dictionary_VR(tag))
    except Exception:  # noqa: BLE001 - not in the dictionary
        return ""


def _name(ds: Dataset, tag: BaseTag) -> str:
    """The keyword, or for a private element its creator and (when pydicom knows it) its name."""
    if not tag.is_private:
        return keyword_for_tag(tag) or ""
    if tag.is_private_creator:
        return "PrivateCreator"
    creator = ""
    try:
        holder = ds.get(Tag(tag.group, tag.element >> 8))
        creator = str(holder.value).strip() if holder is not None and holder.value else ""
    except Exception:  # noqa: BLE001
        creator = ""
    if not creator:
        return "[unknown creator]"
    try:
        description = private_dictionary_description(tag, creator)
    except Exception:  # noqa: BLE001 - not in pydicom's private dictionary
        description = ""
    return f"[{creator}] {description}".strip()


def _value_text(tag: BaseTag, vr: str, value: object) -> str:
    try:
        if value is None:
            return ""
        if isinstance(value, (bytes, bytearray)):
            return _bytes_text(tag, bytes(value), vr)
        if isinstance(value, (MultiValue, list, tuple)):
            return "\\".join(_scalar(v) for v in value)
        return _scalar(value)
    except Exception:  # noqa: BLE001 - a value that will not print
        return "<unreadable value>"


def _scalar(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex(" ")
    return str(value)


def _is_bulk(tag: BaseTag) -> bool:
    return int(tag) in _BULK_TAGS or (tag.group & 0xFF00 == 0x6000 and tag.element == 0x3000)


def _bytes_text(tag: BaseTag, value: bytes | None, vr: str = "") -> str:
    """Bulk data (pixels, overlays, waveforms, long binary) as length and digest prefix: equal
    digests show the pixels untouched, a cleaned image shows replaced."""
    if value is None:
        return ""
    if vr and vr not in _BULK_VRS and not _is_bulk(tag):  # text in an unknown character set
        return value.decode("latin-1").rstrip("\x00 ")
    if _is_bulk(tag) or len(value) > _BULK_ALWAYS_BYTES:
        return f"<{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()[:12]}>"
    return value.hex(" ")


def _read(data: bytes) -> Dataset:
    with pydicom_quiet():
        return dcmread(BytesIO(data), force=True)


def instance_diff(instance: Instance, *, limit: int = TEXT_LIMIT) -> list[DiffRow]:
    """The instance as received beside its de-identified copy; the raw side alone (change
    pending, or withheld) while there is no copy."""
    from fhirai.routing.rules import WITHHELD as WITHHELD_KEY

    raw = _read(blobs.get(instance.blob_key))
    if instance.deid_blob_key in ("", WITHHELD_KEY):
        change = PENDING if not instance.deid_blob_key else WITHHELD
        with pydicom_quiet():
            return _one_sided(_dicom_leaves(raw), change, limit)
    return dicom_diff(raw, _read(blobs.get(instance.deid_blob_key)), limit=limit)


# HL7 v2 -----------------------------------------------------------------------------------------


def _hl7_segments(message: str) -> list[list[str]]:
    text = message.replace("\r\n", "\r").replace("\n", "\r")
    segments = [s for s in text.split("\r") if s.strip()]
    if not segments:
        return []
    field_sep = segments[0][3] if segments[0].startswith("MSH") and len(segments[0]) > 3 else "|"
    return [s.split(field_sep) for s in segments]


def _hl7_leaves(message: str) -> list[_Leaf]:
    rows = _hl7_segments(message)
    leaves: list[_Leaf] = []
    seen: dict[str, int] = {}
    totals: dict[str, int] = {}
    for row in rows:
        totals[row[0]] = totals.get(row[0], 0) + 1
    for row in rows:
        segment = row[0]
        seen[segment] = seen.get(segment, 0) + 1
        label = f"{segment}[{seen[segment]}]" if totals[segment] > 1 else segment
        for index in range(1, len(row)):
            number = index + 1 if segment == "MSH" else index
            if not row[index]:
                continue
            vr = row[2] if segment == "OBX" and number == 5 and len(row) > 2 else ""
            leaves.append(_Leaf(f"{label}-{number}", f"{segment}-{number}", vr, row[index]))
    return leaves


def _relabel(leaves: list[_Leaf], other: list[_Leaf]) -> list[_Leaf]:
    """Repeat indices are written when a segment repeats in either message, so "OBX-5" on one side
    and "OBX[1]-5" on the other never happen."""
    repeated = {leaf.path.split("[")[0] for leaf in other if "[" in leaf.path.split("-")[0]}
    out = []
    for leaf in leaves:
        head, _, number = leaf.path.partition("-")
        if "[" not in head and head in repeated:
            leaf = _Leaf(f"{head}[1]-{number}", leaf.name, leaf.vr, leaf.text)
        out.append(leaf)
    return out


def hl7_diff(raw: str, deid: str, *, limit: int = TEXT_LIMIT) -> list[DiffRow]:
    """Field by field ("PID-5", "OBX[2]-5" for the second OBX), components and escapes as sent;
    a field emptied shows removed, a segment on one side only shows all its fields so."""
    mine, theirs = _hl7_leaves(raw), _hl7_leaves(deid)
    return _rows(_pair(_relabel(mine, theirs), _relabel(theirs, mine)), limit)


def _message_text(message: Message) -> str:
    try:
        return bytes(message.raw).decode(message.codec or "utf-8", errors="replace")
    except LookupError:
        return bytes(message.raw).decode("utf-8", errors="replace")


def message_diff(message: Message, *, limit: int = TEXT_LIMIT) -> list[DiffRow]:
    """The message as received beside its de-identified text: the stored copy of its clinical
    report, else the site profile applied now in memory (nothing stored, no vault entry)."""
    from fhirai.context.models import ClinicalReport
    from fhirai.deid.hl7v2 import message_deidentify

    raw = _message_text(message)
    report = ClinicalReport.objects.filter(message=message).exclude(deid_blob_key="").first()
    if report is not None:
        return hl7_diff(raw, blobs.get(report.deid_blob_key).decode("utf-8", errors="replace"), limit=limit)
    try:
        deid = message_deidentify(raw).message
    except ValueError:  # not parseable as HL7 v2: nothing to compare with
        return _one_sided(_hl7_leaves(raw), UNAVAILABLE, limit)
    return hl7_diff(raw, deid, limit=limit)


# FHIR -------------------------------------------------------------------------------------------


def _json_leaves(node: Any, path: str = "") -> Iterator[_Leaf]:
    if isinstance(node, dict):
        if not node:
            yield _Leaf(path, _json_name(path), "object", "{}")
        for key, value in node.items():
            yield from _json_leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        if not node:
            yield _Leaf(path, _json_name(path), "array", "[]")
        for index, value in enumerate(node):
            yield from _json_leaves(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield _Leaf(path, _json_name(path), "string", node)
    elif isinstance(node, bool) or node is None:
        yield _Leaf(path, _json_name(path), "boolean" if node is not None else "null", json.dumps(node))
    elif isinstance(node, (int, float)):
        yield _Leaf(path, _json_name(path), "number", json.dumps(node))
    else:
        yield _Leaf(path, _json_name(path), type(node).__name__, str(node))


def _json_name(path: str) -> str:
    return re.sub(r"\[\d+\]", "", path)


def fhir_diff(raw: dict[str, Any], deid: dict[str, Any], *, limit: int = TEXT_LIMIT) -> list[DiffRow]:
    """JSON leaf by leaf ("subject.reference", "identifier[0].value"), in the resource's order."""
    return _rows(_pair(list(_json_leaves(raw)), list(_json_leaves(deid))), limit)


def report_diff(report: ClinicalReport, *, limit: int = TEXT_LIMIT) -> list[DiffRow]:
    """A clinical report's source beside its de-identified copy: the FHIR resource version it came
    from (pending while not de-identified), or for an ORU^R01 its message (message_diff)."""
    from fhirai.results.store import resource_version_content

    if report.message_id:
        return message_diff(report.message, limit=limit)
    raw = resource_version_content(report.resource, report.resource_version)
    if not report.deid_blob_key:
        return _one_sided(_json_leaves(raw), PENDING, limit)
    try:
        deid = json.loads(blobs.get(report.deid_blob_key))
    except ValueError:
        return _one_sided(_json_leaves(raw), UNAVAILABLE, limit)
    return fhir_diff(raw, deid, limit=limit)
