"""Consistent keyed pseudonyms (HMAC-SHA256 with the site secret, FHIRAI_DEID_SECRET): the same
input always maps to the same pseudonym at one site, and nobody without the secret can reverse or
even test a guess. UIDs map to `2.25.<decimal>` (PS3.5 B.2 UUID-derived UIDs) or under a site root."""

from __future__ import annotations

import base64
import hashlib
import hmac

from django.conf import settings

STANDARD_UID_ROOT = "1.2.840.10008."  # DICOM's own UIDs (SOP classes, syntaxes): public, kept


def _digest(kind: str, value: str) -> bytes:
    key = settings.FHIRAI_DEID_SECRET.encode()
    return hmac.new(key, f"{kind}\x1f{value}".encode(), hashlib.sha256).digest()


def pseudonym(kind: str, value: str, *, length: int = 16, prefix: str = "") -> str:
    """A pseudonym of at most `length` characters (fits SH/LO/PN values), e.g. P7K2Q...;
    `kind` separates name spaces so a patient ID and an accession never collide."""
    body = base64.b32encode(_digest(kind, value)).decode().rstrip("=")
    return (prefix + body)[:length]


def uid_remap(uid: str) -> str:
    """The consistent replacement of a non-standard UID (PS3.15 action U)."""
    uid = uid.strip().rstrip("\x00")
    if not uid or uid.startswith(STANDARD_UID_ROOT):
        return uid
    number = str(int.from_bytes(_digest("uid", uid)[:16], "big"))
    root = settings.FHIRAI_DEID_UID_ROOT.rstrip(".")
    return f"{root}.{number}"[:64].rstrip(".")


def hmac_int(kind: str, value: str) -> int:
    """A keyed number derived from `value` (e.g. a patient's date shift)."""
    return int.from_bytes(_digest(kind, value)[:8], "big")
