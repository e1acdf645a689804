"""The DICOM upper layer's wire format for the acceptor's hot path, by hand (PS3.8 9.3, PS3.7 6.3,
PS3.10 7.1): PDU headers, P-DATA-TF items, the DIMSE command sets a Storage and Verification SCP
reads and answers (implicit VR little endian), and the Part 10 file meta fhirai stores.

Association negotiation, which happens once per association, uses pynetdicom's PDU classes
(integrations.dicom.acceptor); everything here runs for every message, so it stays plain bytes."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

# PDU types, PS3.8 9.3.1
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

# A-ABORT source and reason, PS3.8 9.3.8 (Table 9-26)
ABORT_SOURCE_USER = 0x00
ABORT_SOURCE_PROVIDER = 0x02
ABORT_REASON_NOT_SPECIFIED = 0x00
ABORT_REASON_UNRECOGNIZED_PDU = 0x01
ABORT_REASON_UNEXPECTED_PDU = 0x02
ABORT_REASON_INVALID_PARAMETER = 0x06

# DIMSE command fields, PS3.7 E.1
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
N_EVENT_REPORT_RQ = 0x0100  # storage commitment reports from a PACS (PS3.7 10.3.1)
NO_DATASET = 0x0101  # Command Data Set Type: no data set follows (PS3.7 E.1-1)

_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")
_ELEMENT = struct.Struct("<HHI")


class ProtocolError(Exception):
    """The peer broke PS3.8 or PS3.7: the association is aborted (A-ABORT with this reason)."""

    def __init__(self, detail: str, reason: int = ABORT_REASON_INVALID_PARAMETER) -> None:
        super().__init__(detail)
        self.reason = reason


def header_decode(header: bytes) -> tuple[int, int]:
    """A PDU's type and the length of what follows its 6-byte header (PS3.8 9.3.1)."""
    pdu_type, length = _HEADER.unpack(header)
    return pdu_type, length


def pdu_header(pdu_type: int, length: int) -> bytes:
    """The 6-byte header of a PDU whose variable part is `length` bytes."""
    return _HEADER.pack(pdu_type, length)


def pdvs(body: memoryview) -> list[tuple[int, int, memoryview]]:
    """The Presentation Data Value items of a P-DATA-TF body (PS3.8 9.3.5): (context ID, message
    control header, fragment). The fragments are views on `body`, not copies."""
    items = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            raise ProtocolError("truncated PDV item")
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError("PDV item length outside its PDU")
        items.append((context_id, control, body[offset + 6 : offset + 4 + length]))
        offset += 4 + length
    return items


def p_data(context_id: int, command: bytes, max_pdu: int) -> bytes:
    """A command set in P-DATA-TF PDUs no larger than the peer's Maximum Length (0: no limit),
    the last fragment flagged (PS3.8 E.2: bit 0 command, bit 1 last)."""
    room = len(command) if not max_pdu else max(max_pdu - 6, 1)
    chunks = [command[i : i + room] for i in range(0, len(command), room)] or [b""]
    out = []
    for n, chunk in enumerate(chunks):
        control = 0x03 if n == len(chunks) - 1 else 0x01
        item = _PDV_HEADER.pack(len(chunk) + 2, context_id, control) + chunk
        out.append(_HEADER.pack(P_DATA_TF, len(item)) + item)
    return b"".join(out)


def release_rp() -> bytes:
    """A-RELEASE-RP (PS3.8 9.3.7)."""
    return _HEADER.pack(A_RELEASE_RP, 4) + b"\x00" * 4


def abort(source: int = ABORT_SOURCE_PROVIDER, reason: int = ABORT_REASON_NOT_SPECIFIED) -> bytes:
    """A-ABORT (PS3.8 9.3.8); the reason is only meaningful from the service provider."""
    return _HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason if source == ABORT_SOURCE_PROVIDER else 0))


@dataclass(frozen=True)
class Command:
    """The fields of a C-STORE-RQ or C-ECHO-RQ command set that the SCP uses (PS3.7 9.3.1, 9.3.5)."""

    field: int
    message_id: int
    dataset_type: int
    sop_class_uid: str
    sop_instance_uid: str
    event_type_id: int | None = None  # N-EVENT-REPORT only

    @property
    def has_dataset(self) -> bool:
        return self.dataset_type != NO_DATASET


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")


def command_decode(data: bytes) -> Command:
    """Read a command set (group 0000, always implicit VR little endian, PS3.7 6.3.1)."""
    found: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 8:
            raise ProtocolError("truncated command set element")
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0x0000 or length == 0xFFFFFFFF or offset + length > end:
            raise ProtocolError("malformed command set")
        found[element] = data[offset : offset + length]
        offset += length

    def us(element: int) -> int:
        value = found.get(element)
        if value is None or len(value) != 2:
            raise ProtocolError(f"command set without (0000,{element:04X})")
        return int.from_bytes(value, "little")

    return Command(
        field=us(0x0100),
        message_id=us(0x0110) if 0x0110 in found else 0,
        dataset_type=us(0x0800),
        sop_class_uid=_uid(found.get(0x0002, b"")),
        sop_instance_uid=_uid(found.get(0x1000, b"")),
        event_type_id=us(0x1002) if 0x1002 in found else None,
    )


def _implicit(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def response_encode(
    request: Command, status: int, *, error_comment: str = "", with_instance: bool = True
) -> bytes:
    """The response command set to `request` (C-STORE-RSP PS3.7 9.3.1.2, C-ECHO-RSP 9.3.5.2), in
    the element order and padding pynetdicom uses: UIDs padded with NUL, LO with a space."""
    body = [
        _implicit(0x0002, _ui(request.sop_class_uid)),
        _implicit(0x0100, (request.field | 0x8000).to_bytes(2, "little")),
        _implicit(0x0120, request.message_id.to_bytes(2, "little")),
        _implicit(0x0800, NO_DATASET.to_bytes(2, "little")),
        _implicit(0x0900, status.to_bytes(2, "little")),
    ]
    if error_comment:
        comment = error_comment.encode("ascii", "replace")
        body.append(_implicit(0x0902, comment + b" " if len(comment) % 2 else comment))
    if with_instance and request.sop_instance_uid:
        body.append(_implicit(0x1000, _ui(request.sop_instance_uid)))
    if request.field == N_EVENT_REPORT_RQ and request.event_type_id is not None:
        body.append(_implicit(0x1002, request.event_type_id.to_bytes(2, "little")))
    rest = b"".join(body)
    return _implicit(0x0000, len(rest).to_bytes(4, "little")) + rest


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


_VERSION_NAME = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
_IMPLEMENTATION = _explicit(0x0012, b"UI", _ui(str(PYNETDICOM_IMPLEMENTATION_UID))) + _explicit(
    0x0013, b"SH", _VERSION_NAME + b" " if len(_VERSION_NAME) % 2 else _VERSION_NAME
)


def part10_prefix(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, "DICM" and the File Meta Information that precede a received data set in the
    stored Part 10 stream (PS3.10 7.1): byte for byte what pynetdicom's
    Event.encoded_dataset() writes (its create_file_meta + encode_file_meta), so the blobs of the
    two SCP engines are identical for the same input."""
    group = (
        _explicit(0x0001, b"OB", b"\x00\x01")
        + _explicit(0x0002, b"UI", _ui(sop_class_uid))
        + _explicit(0x0003, b"UI", _ui(sop_instance_uid))
        + _explicit(0x0010, b"UI", _ui(transfer_syntax_uid))
        + _IMPLEMENTATION
    )
    return b"\x00" * 128 + b"DICM" + _explicit(0x0000, b"UL", len(group).to_bytes(4, "little")) + group
