"""HL7 error conditions (HL7 table 0357, message error condition codes) and the error that carries
one to the ACK: code, where (ERR-2 location SEG^seq^field), human text, and whether it is a
reject (AR: the message cannot be taken at all) or an error (AE: taken, content at fault).
HL7 v2.5.1 ch. 2.9.2: AR for unsupported type, event, processing ID, version or a system down;
AE for errors in the content."""

from __future__ import annotations

from dataclasses import dataclass

SEGMENT_SEQUENCE = ("100", "Segment sequence error")
REQUIRED_FIELD_MISSING = ("101", "Required field missing")
DATA_TYPE_ERROR = ("102", "Data type error")
TABLE_VALUE_NOT_FOUND = ("103", "Table value not found")
UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
UNSUPPORTED_EVENT = ("201", "Unsupported event code")
UNSUPPORTED_PROCESSING_ID = ("202", "Unsupported processing id")
UNSUPPORTED_VERSION = ("203", "Unsupported version id")
APPLICATION_INTERNAL_ERROR = ("207", "Application internal error")


@dataclass
class HL7Error(Exception):
    condition: tuple[str, str]
    text: str
    location: str = ""
    reject: bool = False

    def __str__(self) -> str:
        return f"{self.condition[0]} {self.condition[1]}: {self.text}"
