"""ACK and NAK messages (HL7 v2.5.1 ch. 2.9 acknowledgment rules, ch. 2.14 MSA/ERR).

MSA-1 (HL7 table 0008): AA/AE/AR in original mode, CA/CE/CR for the accept acknowledgment of
enhanced mode. MSA-2 echoes MSH-10. Every AE/AR/CE/CR carries an ERR segment: from v2.5 on with
ERR-2 (location), ERR-3 (the HL7 table 0357 condition) and ERR-4 (severity E); before v2.5 the
older ERR-1 (SEG^seq^field^code&text&HL70357). The ACK echoes the sender's delimiters, version,
processing ID and character set and swaps sending and receiving application/facility."""

from __future__ import annotations

import itertools
import os
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from django.conf import settings

from fhirai.errors import Unavailable
from fhirai.results.destinations import hl7_peer
from integrations.hl7 import errors
from integrations.hl7.errors import HL7Error
from integrations.hl7.mllp import send_only
from integrations.hl7.msh import Header, header_parse

AA, AE, AR = "AA", "AE", "AR"
CA, CE, CR = "CA", "CE", "CR"
_counter = itertools.count(1)
_PREFIX = f"{os.getpid() % 100000:05d}"


def control_id() -> str:
    """A fresh MSH-10 for an outgoing message: unique per process and restart (max 20 chars)."""
    return f"FA{int(time.time()) % 10**9:09d}{_PREFIX}{next(_counter) % 10000:04d}"


def escape(text: str, field_sep: str = "|", encoding: str = "^~\\&") -> str:
    """Escape delimiters in a value (HL7 ch. 2.7); the escape character first."""
    esc = encoding[2]
    pairs = [
        (esc, f"{esc}E{esc}"),
        (field_sep, f"{esc}F{esc}"),
        (encoding[0], f"{esc}S{esc}"),
        (encoding[1], f"{esc}R{esc}"),
    ]
    if len(encoding) > 3:
        pairs.append((encoding[3], f"{esc}T{esc}"))
    for raw, escaped in pairs:
        text = text.replace(raw, escaped)
    return text.replace("\r", " ").replace("\n", " ")


def _now() -> str:
    return datetime.now(ZoneInfo(settings.TIME_ZONE)).strftime("%Y%m%d%H%M%S%z")


def build(
    header: Header | None, code: str, *, error: HL7Error | None = None, acknowledgment: str = ""
) -> str:
    """The ACK for a message (header None when the MSH itself could not be read); `acknowledgment`
    fills MSH-15/16 (NE for an enhanced-mode application ACK, which is not itself acknowledged)."""
    fs = header.field_sep if header else "|"
    enc = header.encoding if header else "^~\\&"
    version = header.version if header and header.version else "2.5.1"
    trigger = header.trigger_event if header else ""
    msh9 = (
        f"ACK{enc[0]}{trigger}{enc[0]}ACK"
        if trigger and version not in ("2.3", "2.3.1")
        else (f"ACK{enc[0]}{trigger}" if trigger else "ACK")
    )
    e = lambda value: escape(value, fs, enc)  # noqa: E731
    msh = [
        "MSH",
        enc,
        e(
            header.receiving_application
            if header and header.receiving_application
            else settings.FHIRAI_HL7_APPLICATION
        ),
        e(header.receiving_facility if header else settings.FHIRAI_HL7_FACILITY),
        e(header.sending_application if header else ""),
        e(header.sending_facility if header else ""),
        _now(),
        "",
        msh9,
        control_id(),
        header.processing_id if header and header.processing_id else "P",
        version,
    ]
    if acknowledgment or (header and header.charset):
        msh += ["", "", acknowledgment, acknowledgment, "", header.charset if header else ""]
        while msh[-1] == "":
            msh.pop()
    segments = [fs.join(msh), fs.join(["MSA", code, e(header.control_id if header else "")])]
    if error is not None:
        segments.append(_err(error, fs, enc, version))
    return "\r".join(segments) + "\r"


def _err(error: HL7Error, fs: str, enc: str, version: str) -> str:
    comp, sub = enc[0], (enc[3] if len(enc) > 3 else "&")
    code, meaning = error.condition
    location = error.location.replace("^", comp)
    text = escape(error.text, fs, enc)
    if version.startswith(("2.3", "2.4")):
        eld = location or comp.join(["", "", ""])
        return fs.join(["ERR", f"{eld}{comp}{code}{sub}{meaning}{sub}HL70357"])
    return fs.join(["ERR", "", location, comp.join([code, meaning, "HL70357"]), "E", "", "", "", text])


def for_error(error: HL7Error, *, enhanced: bool) -> str:
    """MSA-1 for a failure: reject or error, in the mode the sender asked for."""
    if enhanced:
        return CR if error.reject else CE
    return AR if error.reject else AE


def accept_wanted(header: Header, code: str) -> bool:
    """Enhanced mode, MSH-15 (HL7 table 0155): AL always, NE never, ER only on error/reject,
    SU only on success; empty means AL."""
    condition = header.accept_ack or "AL"
    if condition == "NE":
        return False
    if condition == "ER":
        return code in (CE, CR)
    if condition == "SU":
        return code == CA
    return True


def application_ack_send(peer: str, raw: bytes, *, codec: str, code: str, error: str) -> None:
    """Send the enhanced-mode application ACK for `raw` to peer NAME. It asks for no acknowledgment
    of its own (MSH-15/16 NE: HL7 ch. 2.9.3), so nothing is awaited after the send."""
    header = header_parse(raw)
    failure = HL7Error(errors.APPLICATION_INTERNAL_ERROR, error) if error and code != AA else None
    text = build(header, code, error=failure, acknowledgment="NE")
    host, port = hl7_peer(peer)
    try:
        send_only(host, port, text.encode(codec, errors="replace"), timeout=settings.FHIRAI_HL7_TIMEOUT)
    except OSError as exc:
        raise Unavailable(f"HL7 peer {peer} unreachable: {type(exc).__name__}") from exc
