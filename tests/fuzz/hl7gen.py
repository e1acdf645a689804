"""Hypothesis strategies for HL7 v2 input: arbitrary bytes, and valid ADT/ORM/ORU messages with
structured mutations (delimiters, escapes, MSH-18 character sets, truncation, segment changes)."""

from __future__ import annotations

from hypothesis import strategies as st

from integrations.hl7.msh import CHARSETS, SUPPORTED_VERSIONS
from tests.support.hl7msg import adt, orm, oru

BASES = [
    adt("ADT-F1").decode(),
    adt("ADT-F2", event="A08", version="2.3").decode(),
    adt("ADT-F3", event="A40").decode().replace("PV1|1|O", "MRG|OLD-1^^^HOSP^MR"),
    orm("ORM-F1").decode(),
    oru("ORU-F1").decode(),
    oru("ORU-F2").decode().replace("ORU^R01^ORU_R01", "OMI^O23^OMI_O23").replace("NTE|", "IPC|ACC-7|"),
]
DELIMS = "|^~\\&#*@!%$+/:;=?_`{}<>'\"\x00\x7f\xa6"
CHARSET_NAMES = [*CHARSETS, "", "KLINGON", "unicode utf-8", "UNICODE UTF-8~8859/1"]
text = (
    st.text(max_size=40)
    | st.sampled_from(["\\F\\", "\\S\\", "\\X41\\", "\\X4\\", "\\E", "\\", "\\.br\\", "\x00", "A\x00B"])
    | st.text(alphabet="AZ09^&~\\\x00\xe9", min_size=60, max_size=600)
)


@st.composite
def mutated_message(draw: st.DrawFn) -> bytes:
    """A valid message with a few mutations applied, encoded in its (possibly wrong) charset."""
    segments = [seg.split("|") for seg in draw(st.sampled_from(BASES)).strip("\r").split("\r")]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(
            st.sampled_from(
                ["field", "msh-field", "drop", "dup", "charset", "version", "ack", "type", "escape", "empty"]
            )
        )
        if kind == "field" and segments:
            seg = draw(st.integers(0, len(segments) - 1))
            n = draw(st.integers(1, 30))
            fields = segments[seg]
            fields.extend([""] * (n + 1 - len(fields)))
            fields[n] = draw(text)
        elif kind == "msh-field":
            n = draw(st.integers(2, 20))
            segments[0].extend([""] * (n + 1 - len(segments[0])))
            segments[0][n] = draw(text)
        elif kind == "drop" and len(segments) > 1:
            del segments[draw(st.integers(1, len(segments) - 1))]
        elif kind == "dup" and segments:
            segments.insert(draw(st.integers(0, len(segments))), list(draw(st.sampled_from(segments))))
        elif kind == "charset":
            segments[0].extend([""] * (19 - len(segments[0])))
            segments[0][18] = draw(st.sampled_from(CHARSET_NAMES))
        elif kind == "version":
            segments[0].extend([""] * (13 - len(segments[0])))
            segments[0][12] = draw(st.sampled_from([*SUPPORTED_VERSIONS, "2.1", "", "2.5.1^X"]))
        elif kind == "ack":
            segments[0].extend([""] * (17 - len(segments[0])))
            segments[0][15] = draw(st.sampled_from(["", "AL", "NE", "ER", "SU", "XX"]))
            segments[0][16] = draw(st.sampled_from(["", "AL", "NE", "ER", "SU"]))
        elif kind == "type":
            segments[0].extend([""] * (10 - len(segments[0])))
            segments[0][9] = draw(
                st.sampled_from(
                    ["ADT^A01", "ADT^A40", "ORM^O01", "ORU^R01", "OMI^O23", "ACK", "ADT", "^", ""]
                )
            )
        elif kind == "escape":
            seg = draw(st.integers(0, len(segments) - 1))
            if len(segments[seg]) > 2:
                n = draw(st.integers(2, len(segments[seg]) - 1))
                segments[seg][n] += draw(st.sampled_from(["\\F\\", "\\X0D0A\\", "\\Xzz\\", "\\", "\\R\\~"]))
        elif kind == "empty" and len(segments) > 1:
            seg = draw(st.integers(1, len(segments) - 1))
            segments[seg] = segments[seg][:1]
    field_sep = "|"
    encoding = "^~\\&"
    if draw(st.booleans()):
        field_sep = draw(st.sampled_from(DELIMS))
        encoding = "".join(draw(st.lists(st.sampled_from(DELIMS), min_size=3, max_size=5)))
    body = []
    for n, fields in enumerate(segments):
        if n == 0:
            rest = [
                f.translate(str.maketrans({"^": encoding[:1] or "^", "~": encoding[1:2] or "~"}))
                for f in fields[2:]
            ]
            body.append(field_sep.join(["MSH", encoding, *rest]))
        else:
            body.append(field_sep.join(fields))
    terminator = draw(st.sampled_from(["\r", "\n", "\r\n"]))
    message = terminator.join(body) + draw(st.sampled_from([terminator, ""]))
    codec = CHARSETS.get(segments[0][18].upper() if len(segments[0]) > 18 else "", "utf-8")
    codec = draw(st.sampled_from([codec, "utf-8", "latin-1", "utf-16", "cp1252"]))
    raw = message.encode(codec, errors="replace")
    if draw(st.integers(0, 4)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


hl7_input = (
    st.binary(max_size=400) | st.binary(max_size=200).map(lambda b: b"MSH|^~\\&|" + b) | mutated_message()
)
