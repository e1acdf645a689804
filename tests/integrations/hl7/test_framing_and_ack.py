from __future__ import annotations

import pytest

from integrations.hl7 import ack, errors
from integrations.hl7.errors import HL7Error
from integrations.hl7.mllp import Framer, peer_allowed
from integrations.hl7.msh import header_parse, unescape
from tests.support.hl7msg import adt, message, msh, orm

VT, END = b"\x0b", b"\x1c\x0d"


def test_framer_reassembles_partial_reads_and_splits_several_frames():
    one, two = adt("A1"), orm("O1")
    stream = b"noise" + VT + one + END + VT + two + END
    framer = Framer(1 << 20)
    frames = []
    for i in range(0, len(stream), 7):  # 7-byte reads: every boundary falls somewhere awkward
        frames += framer.feed(stream[i : i + 7])
    assert [f.payload for f in frames] == [one, two] and not any(f.problem for f in frames)
    assert framer.dropped == len(b"noise")
    framer = Framer(1 << 20)
    assert [f.payload for f in framer.feed(stream)] == [one, two]


def test_framer_end_block_split_across_reads():
    framer = Framer(1 << 20)
    assert framer.feed(VT + adt() + b"\x1c") == []
    assert [f.payload for f in framer.feed(b"\x0d")] == [adt()]


def test_framer_reports_truncated_and_oversize_frames():
    framer = Framer(1 << 20)
    frames = framer.feed(VT + b"MSH|^~\\&|half" + VT + adt() + END)
    assert [f.problem for f in frames] == ["truncated", ""]
    small = Framer(1024)
    big = adt() + b"X" * 5000
    frames = small.feed(VT + big + END + VT + adt() + END)
    assert [f.problem for f in frames] == ["oversize", ""]
    assert frames[0].payload.startswith(b"MSH")


def test_header_reads_delimiters_type_control_id_and_charset():
    raw = message(msh("C\\F\\1", "ADT^A08^ADT_A01", extra="|||AL|NE||UNICODE UTF-8"), "PID|1||X")
    h = header_parse(raw)
    assert h.control_id == "C|1" and h.message_type == "ADT^A08" and h.structure == "ADT_A01"
    assert h.sender == "RIS^HOSP" and h.codec == "utf-8" and h.enhanced and h.accept_ack == "AL"
    custom = header_parse(b"MSH#*@!%#RIS#HOSP#FHIRAI#HOSP#20260101##ORU*R01#X9#P#2.4\rPID###")
    assert custom.field_sep == "#" and custom.message_type == "ORU^R01" and custom.control_id == "X9"


@pytest.mark.parametrize(
    ("raw", "condition", "reject"),
    [
        (b"HELLO THIS IS NOT HL7", errors.SEGMENT_SEQUENCE, True),
        (b"MSH|^^\\&|RIS|HOSP|||2026||ADT^A01|X|P|2.5.1", errors.DATA_TYPE_ERROR, True),
        (message(msh("", "ADT^A01")), errors.REQUIRED_FIELD_MISSING, False),
        (message(msh("V1", "ADT^A01", "2.1")), errors.UNSUPPORTED_VERSION, True),
        (message(msh("C1", "ADT^A01", extra="||||||KLINGON")), errors.TABLE_VALUE_NOT_FOUND, True),
        (
            message(msh("C1", "ADT^A01", extra="||||||UNICODE UTF-8")).replace(b"HOSP", b"H\xffSP", 1),
            errors.DATA_TYPE_ERROR,
            False,
        ),
    ],
)
def test_bad_headers_are_refused_with_the_right_condition(raw, condition, reject):
    with pytest.raises(HL7Error) as exc:
        header_parse(raw)
    assert exc.value.condition == condition and exc.value.reject is reject


def test_unescape_handles_delimiters_and_hex():
    assert unescape("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\", "|", "^~\\&") == "a|b^c&d~e\\fA"


def test_ack_echoes_control_id_swaps_sender_and_carries_err():
    h = header_parse(adt("CTRL-1"))
    text = ack.build(h, ack.AA)
    msh_fields, msa = text.split("\r")[0].split("|"), text.split("\r")[1]
    assert msa == "MSA|AA|CTRL-1"
    assert msh_fields[2:6] == ["FHIRAI", "HOSP", "RIS", "HOSP"] and msh_fields[8] == "ACK^A01^ACK"
    assert msh_fields[11] == "2.5.1"
    err = HL7Error(errors.REQUIRED_FIELD_MISSING, "PID-3 missing | badly", location="PID^1^3")
    nak = ack.build(h, ack.AE, error=err).split("\r")
    assert nak[1] == "MSA|AE|CTRL-1"
    assert nak[2] == "ERR||PID^1^3|101^Required field missing^HL70357|E||||PID-3 missing \\F\\ badly"
    old = header_parse(orm("O-1"))  # v2.3: ERR-1 in the older ELD form
    assert (
        ack.build(old, ack.AR, error=err).split("\r")[2] == "ERR|PID^1^3^101&Required field missing&HL70357"
    )


def test_enhanced_mode_accept_conditions():
    def h(cond: str):
        return header_parse(message(msh("E1", "ADT^A01", extra=f"|||{cond}|AL"), "PID|1"))

    assert ack.accept_wanted(h("AL"), ack.CA) and not ack.accept_wanted(h("NE"), ack.CA)
    assert ack.accept_wanted(h("ER"), ack.CE) and not ack.accept_wanted(h("ER"), ack.CA)
    assert ack.accept_wanted(h("SU"), ack.CA) and not ack.accept_wanted(h("SU"), ack.CR)
    assert ack.for_error(HL7Error(errors.UNSUPPORTED_VERSION, "x", reject=True), enhanced=True) == ack.CR


def test_allow_list():
    assert peer_allowed("10.1.2.3", [])
    assert peer_allowed("10.1.2.3", ["10.1.0.0/16"]) and not peer_allowed(
        "10.2.0.1", ["10.1.0.0/16", "127.0.0.1"]
    )
