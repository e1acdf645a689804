"""Which senders may come in: DICOM calling AE titles and MLLP source networks, from the settings
(FHIRAI_DICOM_ALLOW, FHIRAI_MLLP_ALLOW) plus the console's SourceRule rows. An empty list for a
kind admits every sender of that kind. The listeners ask for every association or connection;
the rows are cached for a few seconds per process, so a change in the console reaches a listener
in another process within RULES_TTL seconds, without a restart."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from fhirai.errors import FhiraiError
from fhirai.ingest.models import SourceRule

DICOM_AE = "dicom-ae"
MLLP_NETWORK = "mllp-network"
KINDS = (DICOM_AE, MLLP_NETWORK)
RULES_TTL = 5.0
log = logging.getLogger(__name__)
_cache: dict[str, tuple[float, list[str]]] = {}
_lock = threading.Lock()


class InvalidSource(FhiraiError):
    """An AE title or network that cannot be one, said for the operator."""


def _rules(kind: str) -> list[str]:
    now = time.monotonic()
    with _lock:
        hit = _cache.get(kind)
        if hit is not None and now - hit[0] < RULES_TTL:
            return hit[1]
    try:
        values = list(SourceRule.objects.filter(kind=kind).values_list("value", flat=True))
    except DatabaseError:
        # The database is away: keep the last list read (an item could not be committed now
        # anyway, and the listeners refuse it in their protocol's terms).
        log.warning("allowed %s senders could not be read: using the last list", kind)
        return hit[1] if hit is not None else []
    with _lock:
        _cache[kind] = (now, values)
    return values


def sources_changed() -> None:
    """Forget the cached rows (this process sees a change at once; others within RULES_TTL)."""
    with _lock:
        _cache.clear()


def dicom_calling_allowed() -> list[str]:
    """The calling AE titles allowed to associate ([] = any)."""
    return list(dict.fromkeys([*settings.FHIRAI_DICOM_ALLOW, *_rules(DICOM_AE)]))


def mllp_networks() -> list[str]:
    """The networks MLLP connections may come from ([] = any)."""
    return list(dict.fromkeys([*settings.FHIRAI_MLLP_ALLOW, *_rules(MLLP_NETWORK)]))


def source_clean(kind: str, value: str) -> str:
    value = value.strip()
    if kind == DICOM_AE:
        # PS3.5 AE: 1-16 characters of the default repertoire, no backslash or control characters,
        # not only spaces (leading and trailing spaces are not significant).
        if not 0 < len(value) <= 16 or any(c == "\\" or not 0x20 <= ord(c) < 0x7F for c in value):
            raise InvalidSource(f"{value!r} is not an AE title (1 to 16 printable characters, no backslash)")
        return value
    if kind == MLLP_NETWORK:
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise InvalidSource(f"{value!r} is not an IP address or network (e.g. 10.1.2.0/24)") from None
    raise InvalidSource(f"kind must be one of {', '.join(KINDS)}")


def source_rule_add(kind: str, value: str, *, note: str = "", actor: str) -> SourceRule:
    value = source_clean(kind, value)
    row, _ = SourceRule.objects.get_or_create(
        kind=kind,
        value=value,
        defaults={"note": note[:200], "created_at": timezone.now(), "created_by": actor[:160]},
    )
    sources_changed()
    return row


def source_rule_remove(rule_id: int) -> SourceRule | None:
    row = SourceRule.objects.filter(pk=rule_id).first()
    if row is not None:
        row.delete()
        sources_changed()
    return row
