"""A fast path for the receive's header parse: find the few top-level elements fhirai indexes in a
Part 10 stream without pydicom walking the whole header, and hand them to pydicom as raw elements,
so that their values are still decoded by pydicom (VRs, character sets) exactly as before.

Per C-STORE, dcmread(stop_before_pixels=True) costs about as much CPU as the rest of the receive's
Python; this reads only what is needed. Anything it is not sure about (no preamble, a file meta
without its group length, big endian or deflated data, an element of undefined length before the
last element needed, a VR it does not know) returns None, and the caller parses with pydicom."""

from __future__ import annotations

import struct

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import UID

# The elements fhirai.ingest.receive reads (keep in step with _study_defaults, _instance_values).
KEYWORDS = (
    "SpecificCharacterSet",
    "ImageType",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "Modality",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "BodyPartExamined",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "InstanceNumber",
    "ImageOrientationPatient",
)
_NEEDED = frozenset(int(tag_for_keyword(k) or 0) for k in KEYWORDS)
_LAST = max(_NEEDED)
_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_EXPLICIT_LE = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflated
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_SHORT_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
}  # fmt: skip
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def header_read(raw: bytes) -> Dataset | None:
    """The indexed elements of a Part 10 stream as a pydicom Dataset (values decoded on access, as
    from dcmread), with file_meta.TransferSyntaxUID; None when pydicom must read it instead."""
    try:
        return _read(raw)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError):
        return None


def _read(raw: bytes) -> Dataset | None:
    if len(raw) < 144 or raw[128:132] != b"DICM":
        return None
    # File Meta Information (PS3.10 7.1): explicit VR little endian, led by its group length.
    if _TAG.unpack_from(raw, 132) != (0x0002, 0x0000) or raw[136:138] != b"UL":
        return None
    start = 144 + _U32.unpack_from(raw, 140)[0]
    syntax = None
    pos = 144
    while pos < start:
        group, element = _TAG.unpack_from(raw, pos)
        vr = raw[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length, header = _U32.unpack_from(raw, pos + 8)[0], 12
        elif vr in _SHORT_VRS:
            length, header = _U16.unpack_from(raw, pos + 6)[0], 8
        else:
            return None
        if group != 0x0002 or length == 0xFFFFFFFF:
            return None
        if element == 0x0010:
            syntax = raw[pos + header : pos + header + length].rstrip(b"\x00 ").decode("ascii")
        pos += header + length
    if syntax is None or pos != start or syntax in _NOT_EXPLICIT_LE:
        return None
    implicit = syntax == _IMPLICIT_LE
    found: dict[Tag, RawDataElement] = {}
    end = len(raw)
    while pos + 8 <= end:
        group, element = _TAG.unpack_from(raw, pos)
        tag = group << 16 | element
        if tag > _LAST:
            break
        vr: str | None
        if implicit:
            vr, length, header = None, _U32.unpack_from(raw, pos + 4)[0], 8
        else:
            code = raw[pos + 4 : pos + 6]
            if code in _LONG_VRS:
                length, header = _U32.unpack_from(raw, pos + 8)[0], 12
            elif code in _SHORT_VRS:
                length, header = _U16.unpack_from(raw, pos + 6)[0], 8
            else:
                return None
            vr = code.decode("ascii")
        if length == 0xFFFFFFFF or pos + header + length > end:
            return None  # a sequence of undefined length (or a truncated stream): pydicom's job
        if tag in _NEEDED:
            value = raw[pos + header : pos + header + length]
            found[Tag(tag)] = RawDataElement(Tag(tag), vr, length, value, pos + header, implicit, True, True)
        pos += header + length
    ds = Dataset(found)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.set_original_encoding(implicit, True)
    return ds
