"""The message header (MSH) read straight from the bytes, fast enough for the receive path
(hl7apy parses the whole message later, in the processing stage).

HL7 v2.5.1 ch. 2.5-2.7: MSH-1 is the field separator (the 4th character), MSH-2 the encoding
characters (component, repetition, escape, subcomponent; v2.7+ may add truncation); segments end
with CR (many senders use LF or CRLF: accepted here). MSH-18 names the character set of the rest
of the message; without it the bytes must be ASCII by the standard, which feeds routinely ignore,
so UTF-8 is tried and then ISO 8859-1."""

from __future__ import annotations

import re
from dataclasses import dataclass

from integrations.hl7 import errors

# HL7 table 0211 (alternate character sets) -> Python codecs.
CHARSETS = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE": "utf-16",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "ISO IR87": "iso2022_jp",
    "ISO IR192": "utf-8",
}
SUPPORTED_VERSIONS = {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"}
PROCESSING_IDS = {"P", "T", "D"}
ACK_CONDITIONS = {"AL", "NE", "ER", "SU"}
SEGMENT_END = re.compile(rb"\r\n|\n|\r")


@dataclass(frozen=True)
class Header:
    field_sep: str
    encoding: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_code: str
    trigger_event: str
    structure: str
    control_id: str
    processing_id: str
    version: str
    accept_ack: str
    application_ack: str
    charset: str
    codec: str

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger_event}" if self.trigger_event else self.message_code

    @property
    def sender(self) -> str:
        """Sending application ^ facility: with MSH-10, the message's identity (HL7 ch. 2.10.1)."""
        return f"{self.sending_application}^{self.sending_facility}"

    @property
    def enhanced(self) -> bool:
        """Enhanced acknowledgment mode: the sender filled MSH-15 or MSH-16 (HL7 ch. 2.9.3)."""
        return bool(self.accept_ack or self.application_ack)


def unescape(value: str, field_sep: str, encoding: str) -> str:
    """Resolve the escape sequences of HL7 ch. 2.7 in a single value (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\)."""
    if len(encoding) < 3 or encoding[2] not in value:
        return value
    comp, rep, esc = encoding[0], encoding[1], encoding[2]
    sub = encoding[3] if len(encoding) > 3 else "&"
    table = {"F": field_sep, "S": comp, "T": sub, "R": rep, "E": esc}
    out, i = [], 0
    while i < len(value):
        if value[i] == esc:
            end = value.find(esc, i + 1)
            if end > i:
                code = value[i + 1 : end]
                if code in table:
                    out.append(table[code])
                elif code.startswith("X") and len(code) % 2 == 1:
                    try:
                        out.append(bytes.fromhex(code[1:]).decode("latin-1"))
                    except ValueError:
                        out.append(value[i : end + 1])
                else:
                    out.append(value[i : end + 1])  # formatting (\.br\ ...) is the reader's concern
                i = end + 1
                continue
        out.append(value[i])
        i += 1
    return "".join(out)


def header_parse(raw: bytes) -> Header:
    """Read and check the MSH. Raises HL7Error (with the AR/AE it calls for) on anything the
    receive path must refuse: no MSH, bad delimiters, missing control id, unsupported version,
    processing id or character set."""
    start = raw.lstrip(b"\r\n \t")
    if not start.startswith(b"MSH") or len(start) < 8:
        raise errors.HL7Error(
            errors.SEGMENT_SEQUENCE, "the message does not begin with an MSH segment", reject=True
        )
    segment = SEGMENT_END.split(start, 1)[0].decode("latin-1")
    field_sep = segment[3]
    fields = segment.split(field_sep)
    encoding = fields[1] if len(fields) > 1 else ""
    _check_delimiters(field_sep, encoding)
    msh = ["MSH", field_sep, *fields[1:]]  # msh[n] is MSH-n

    def get(n: int) -> str:
        return msh[n] if len(msh) > n else ""

    def comp(n: int, k: int) -> str:
        parts = get(n).split(encoding[1])[0].split(encoding[0])  # first repetition, k-th component
        return unescape(parts[k], field_sep, encoding) if len(parts) > k else ""

    charset = comp(18, 0).strip().upper()
    codec = _codec(charset, start)
    if "\x00" in (start.decode(codec) if codec.startswith("utf-16") else "") or (
        not codec.startswith("utf-16") and b"\x00" in start
    ):
        # HL7 v2 text has no NUL (ch. 2.7); the database cannot keep one in a text column either.
        raise errors.HL7Error(
            errors.DATA_TYPE_ERROR, "the message contains NUL characters", location="MSH^1^1"
        )
    control_id = unescape(get(10), field_sep, encoding).strip()
    if not control_id:
        raise errors.HL7Error(
            errors.REQUIRED_FIELD_MISSING, "MSH-10 (message control ID) is empty", location="MSH^1^10"
        )
    header = Header(
        field_sep=field_sep,
        encoding=encoding,
        sending_application=comp(3, 0),
        sending_facility=comp(4, 0),
        receiving_application=comp(5, 0),
        receiving_facility=comp(6, 0),
        message_code=comp(9, 0).upper(),
        trigger_event=comp(9, 1).upper(),
        structure=comp(9, 2).upper(),
        control_id=control_id[:199],
        processing_id=comp(11, 0).upper(),
        version=comp(12, 0),
        accept_ack=comp(15, 0).upper(),
        application_ack=comp(16, 0).upper(),
        charset=charset,
        codec=codec,
    )
    _check_header(header)
    return header


def _check_delimiters(field_sep: str, encoding: str) -> None:
    bad = (
        field_sep.isalnum()
        or field_sep in "\r\n "
        or len(encoding) not in (4, 5)
        or len(set(encoding + field_sep)) != len(encoding) + 1
        or any(ch.isalnum() or ch in "\r\n " for ch in encoding)
    )
    if bad:
        raise errors.HL7Error(
            errors.DATA_TYPE_ERROR,
            "MSH-1/MSH-2 do not declare valid, distinct delimiters",
            location="MSH^1^2",
            reject=True,
        )


def _codec(charset: str, raw: bytes) -> str:
    if charset:
        codec = CHARSETS.get(charset)
        if codec is None:
            raise errors.HL7Error(
                errors.TABLE_VALUE_NOT_FOUND,
                f"character set {charset!r} (MSH-18) is not supported",
                location="MSH^1^18",
                reject=True,
            )
        try:
            raw.decode(codec)
        except UnicodeDecodeError:
            raise errors.HL7Error(
                errors.DATA_TYPE_ERROR,
                f"the message bytes are not valid {charset} (MSH-18)",
                location="MSH^1^18",
            ) from None
        return codec
    try:
        raw.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        return "latin-1"


def _check_header(h: Header) -> None:
    if h.version not in SUPPORTED_VERSIONS:
        raise errors.HL7Error(
            errors.UNSUPPORTED_VERSION,
            f"version {h.version or '(empty)'} (MSH-12) is not supported; 2.3 to 2.8 are",
            location="MSH^1^12",
            reject=True,
        )
    if h.processing_id not in PROCESSING_IDS:
        raise errors.HL7Error(
            errors.UNSUPPORTED_PROCESSING_ID,
            f"processing ID {h.processing_id or '(empty)'} (MSH-11) is not supported",
            location="MSH^1^11",
            reject=True,
        )
    for n, value in ((15, h.accept_ack), (16, h.application_ack)):
        if value and value not in ACK_CONDITIONS:
            raise errors.HL7Error(
                errors.TABLE_VALUE_NOT_FOUND,
                f"MSH-{n} {value!r} is not an HL7 table 0155 value",
                location=f"MSH^1^{n}",
            )
    if not h.message_code:
        raise errors.HL7Error(
            errors.REQUIRED_FIELD_MISSING, "MSH-9 (message type) is empty", location="MSH^1^9", reject=True
        )
