"""Where results go, as configured: the settings give the defaults (FHIRAI_FHIR_UPSTREAM_URL,
FHIRAI_HL7_PEERS), the console's Destination rows override an address, switch a destination off
or add an HL7 peer. Write-back, application ACKs and the console all read this one table, so a
destination fixed in the console is used by the next attempt (a retry) without a restart.

Names: "fhir-upstream" for the upstream FHIR server (its credentials come from the settings),
"mllp:NAME" for each HL7 v2 peer, "dicom:NAME" for each PACS that gets the results as DICOM (SR)
by C-STORE, addressed AE_TITLE@HOST:PORT."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fhirai.errors import FhiraiError, Unavailable
from fhirai.results.models import Destination

FHIR_UPSTREAM = "fhir-upstream"
MLLP_PREFIX = "mllp:"
DICOM_PREFIX = "dicom:"
PEER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,58}")
CHECK_TIMEOUT = 5.0


class InvalidDestination(FhiraiError):
    """A destination's name or address does not make sense (said in words for the operator)."""


@dataclass(frozen=True)
class DestinationView:
    """One destination as it is in effect: where from (settings, console, or both)."""

    name: str
    kind: str  # "fhir" or "mllp"
    address: str
    enabled: bool
    origin: str  # "settings", "console", or "settings, changed in the console"
    updated_at: object = None
    updated_by: str = ""


def _kind(name: str) -> str:
    if name == FHIR_UPSTREAM:
        return "fhir"
    return "dicom" if name.startswith(DICOM_PREFIX) else "mllp"


def _defaults() -> dict[str, str]:
    out = {FHIR_UPSTREAM: settings.FHIRAI_FHIR_UPSTREAM_URL} if settings.FHIRAI_FHIR_UPSTREAM_URL else {}
    for peer, (host, port) in settings.FHIRAI_HL7_PEERS.items():
        out[f"{MLLP_PREFIX}{peer}"] = f"{host}:{port}"
    for pacs, (aet, host, port) in settings.FHIRAI_PACS_DESTINATIONS.items():
        out[f"{DICOM_PREFIX}{pacs}"] = f"{aet}@{host}:{port}"
    return out


def destination_list() -> list[DestinationView]:
    """Every destination in effect or switched off: the FHIR upstream first, then HL7 peers by name."""
    defaults = _defaults()
    rows = {row.name: row for row in Destination.objects.all()}
    views = []
    for name in sorted(set(defaults) | set(rows), key=lambda n: (n != FHIR_UPSTREAM, n)):
        row = rows.get(name)
        if row is None:
            views.append(DestinationView(name, _kind(name), defaults[name], True, "settings"))
            continue
        origin = "console" if name not in defaults else "settings, changed in the console"
        views.append(
            DestinationView(
                name, _kind(name), row.address, row.enabled, origin, row.updated_at, row.updated_by
            )
        )
    return views


def destination_get(name: str) -> DestinationView | None:
    return next((d for d in destination_list() if d.name == name), None)


def destinations() -> list[str]:
    """The names results are written to now: every enabled destination."""
    return [d.name for d in destination_list() if d.enabled]


def fhir_upstream_url() -> str:
    """The upstream FHIR server's base URL in effect ('' when none is configured or it is off)."""
    view = destination_get(FHIR_UPSTREAM)
    return view.address if view is not None and view.enabled else ""


def hl7_peers() -> dict[str, tuple[str, int]]:
    """The enabled HL7 peers: NAME -> (host, port)."""
    return {
        d.name[len(MLLP_PREFIX) :]: _host_port(d.address)
        for d in destination_list()
        if d.kind == "mllp" and d.enabled
    }


def hl7_peer(peer: str) -> tuple[str, int]:
    """One HL7 peer's address; Unavailable when it is not configured (or switched off) now."""
    try:
        return hl7_peers()[peer]
    except KeyError:
        raise Unavailable(f"HL7 peer {peer} is not configured (or is switched off)") from None


def pacs_peers() -> dict[str, tuple[str, str, int]]:
    """The enabled PACS destinations: NAME -> (called AE title, host, port)."""
    return {
        d.name[len(DICOM_PREFIX) :]: _ae_host_port(d.address)
        for d in destination_list()
        if d.kind == "dicom" and d.enabled
    }


def pacs_peer(name: str) -> tuple[str, str, int]:
    """One PACS destination's address; Unavailable when it is not configured (or switched off)."""
    try:
        return pacs_peers()[name]
    except KeyError:
        raise Unavailable(f"PACS {name} is not configured (or is switched off)") from None


def pacs_address(value: str) -> tuple[str, str, int]:
    """A PACS named by its destination name (FHIRAI_PACS_DESTINATIONS or the console) or given as
    AE_TITLE@HOST:PORT: (called AE title, host, port). Unavailable when the name is unknown."""
    if "@" in value:
        return _ae_host_port(value)
    return pacs_peer(value.strip())


def _ae_host_port(address: str) -> tuple[str, str, int]:
    aet, sep, rest = address.strip().rpartition("@")  # a host has no @; an AE title may
    aet = aet.strip()
    if not sep or not 0 < len(aet) <= 16 or any(c == "\\" or not 0x20 <= ord(c) < 0x7F for c in aet):
        raise InvalidDestination(f"{address!r} is not AE_TITLE@HOST:PORT (an AE title of 1 to 16 characters)")
    host, port = _host_port(rest)
    return aet, host, port


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidDestination(f"{address!r} is not HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def _url_check(address: str) -> str:
    address = address.strip().rstrip("/")
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidDestination(f"{address!r} is not an http or https URL with a host")
    if parts.query or parts.fragment:
        raise InvalidDestination("a FHIR base URL has no query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise InvalidDestination(f"{address!r} has a port out of range") from None
    return address


def destination_clean(name: str, address: str) -> tuple[str, str]:
    """The name and address normalised, or InvalidDestination saying what is wrong."""
    name = name.strip()
    if name == FHIR_UPSTREAM:
        return name, _url_check(address)
    if name.startswith(DICOM_PREFIX) and PEER_NAME.fullmatch(name[len(DICOM_PREFIX) :]):
        aet, host, port = _ae_host_port(address)
        return name, f"{aet}@[{host}]:{port}" if ":" in host else f"{aet}@{host}:{port}"
    if not name.startswith(MLLP_PREFIX) or not PEER_NAME.fullmatch(name[len(MLLP_PREFIX) :]):
        raise InvalidDestination(
            f"a destination is {FHIR_UPSTREAM}, mllp:NAME or dicom:NAME (letters, digits, _ . -), not {name!r}"
        )
    host, port = _host_port(address)
    return name, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def destination_save(name: str, address: str, *, enabled: bool, actor: str) -> DestinationView:
    """Set a destination's address and switch (validated); returns it as now in effect."""
    name, address = destination_clean(name, address)
    with transaction.atomic():
        Destination.objects.update_or_create(
            name=name,
            defaults={
                "address": address,
                "enabled": enabled,
                "updated_at": timezone.now(),
                "updated_by": actor[:160],
            },
        )
    view = destination_get(name)
    assert view is not None  # nosec B101  # narrows the type for mypy; under -O the next line fails the same way
    return view


def destination_reset(name: str) -> bool:
    """Drop the console's change: the destination is as the settings say again (or gone)."""
    return Destination.objects.filter(name=name).delete()[0] > 0


def destination_probe(name: str) -> str:
    """A connection test for the console: the FHIR server's CapabilityStatement, or a TCP connect to
    the MLLP peer. Returns one line; raises Unavailable with the reason."""
    view = destination_get(name)
    if view is None:
        raise Unavailable(f"no destination {name}")
    if view.kind == "dicom":
        from django.utils.module_loading import import_string

        aet, host, port = _ae_host_port(view.address)
        return import_string(settings.FHIRAI_DICOM_ECHO)(name, aet, host, port)
    if view.kind == "mllp":
        host, port = _host_port(view.address)
        try:
            with socket.create_connection((host, port), timeout=CHECK_TIMEOUT):
                pass
        except OSError as exc:
            raise Unavailable(f"{name}: cannot connect to {view.address}: {type(exc).__name__}") from exc
        return f"{name}: {view.address} accepts connections"
    import requests  # the adapters' HTTP client; only needed for this check

    try:
        reply = requests.get(
            f"{view.address}/metadata",
            headers={"Accept": "application/fhir+json"},
            timeout=CHECK_TIMEOUT,
        )
    except requests.RequestException as exc:
        raise Unavailable(f"{name}: {view.address} unreachable: {type(exc).__name__}") from exc
    kind = ""
    try:
        kind = reply.json().get("resourceType", "")
    except ValueError:
        pass
    if reply.status_code != 200 or kind != "CapabilityStatement":
        raise Unavailable(
            f"{name}: GET {view.address}/metadata answered HTTP {reply.status_code}"
            + (f" with a {kind}" if kind else "")
            + ", not a CapabilityStatement"
        )
    return f"{name}: {view.address} answers with a CapabilityStatement"
