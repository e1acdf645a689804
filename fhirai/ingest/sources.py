"""Which senders may come in: DICOM calling AE titles and MLLP source networks, from the settings
(FHIRAI_DICOM_ALLOW, FHIRAI_MLLP_ALLOW) plus the console's SourceRule rows. An empty list for a
kind admits every sender of that kind. The listeners ask for every association or connection;
the rows are cached for a few seconds per process, so a change in the console reaches a listener
in another process within RULES_TTL seconds, without a restart.

A DICOM entry is `AE` (from any address) or `AE@address-or-network` (`CT_1@10.20.1.15`,
`PACS@10.20.0.0/24`, `US_3@2001:db8::/64`): an AE title is whatever the sender says it is, so a
site pins each sender to where it really is. dicom_association_check() decides each association
(and, with FHIRAI_DICOM_CHECK_CALLED_AE, whether it was addressed to one of fhirai's own titles)."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.utils import timezone

from fhirai.errors import FhiraiError
from fhirai.ingest.models import SourceRule

DICOM_AE = "dicom-ae"
MLLP_NETWORK = "mllp-network"
KINDS = (DICOM_AE, MLLP_NETWORK)
RULES_TTL = 5.0
# Why an association was refused, kept with the rejection (console: Rejected at the door). The
# sender is told only the A-ASSOCIATE-RJ reason (calling or called AE title not recognized): which
# part of a rule failed is for the operator, not for whoever is probing.
CALLING_AE_NOT_ALLOWED = "calling-ae-not-allowed"
CALLING_ADDRESS_NOT_ALLOWED = "calling-ae-address-not-allowed"
CALLED_AE_NOT_RECOGNIZED = "called-ae-not-recognized"
log = logging.getLogger(__name__)
_cache: dict[str, tuple[float, list[str]]] = {}
_lock = threading.Lock()


class InvalidSource(FhiraiError):
    """An AE title or network that cannot be one, said for the operator."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AeRule:
    """One DICOM allow-list entry: a calling AE title, and the network it must come from (None:
    any address)."""

    ae_title: str
    network: Network | None = None

    def __str__(self) -> str:
        if self.network is None:
            return self.ae_title
        return f"{self.ae_title}@{_network_text(self.network)}"

    def admits(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        """Whether a peer at `address` may use this entry's title (an unreadable address may not
        use a pinned one)."""
        if self.network is None:
            return True
        return address is not None and address.version == self.network.version and address in self.network


@dataclass(frozen=True)
class Refusal:
    """Why an association is refused: one of the codes above, and a line for the operator."""

    code: str
    detail: str


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
    """The calling AE entries allowed to associate, `AE` or `AE@network` ([] = any)."""
    return list(dict.fromkeys([*settings.FHIRAI_DICOM_ALLOW, *_rules(DICOM_AE)]))


def dicom_settings_rules() -> list[AeRule]:
    """FHIRAI_DICOM_ALLOW, parsed; ImproperlyConfigured names a malformed entry (the SCP calls
    this when it starts, so a typo stops it rather than refusing or admitting the wrong senders)."""
    rules = []
    for value in settings.FHIRAI_DICOM_ALLOW:
        try:
            rules.append(ae_rule_parse(value))
        except InvalidSource as exc:
            raise ImproperlyConfigured(f"FHIRAI_DICOM_ALLOW: {exc}") from None
    return rules


def dicom_rules() -> list[AeRule]:
    """The allow-list, parsed: the settings' entries, then the console's. A stored row that no
    longer parses (a title with `@`, added before addresses could be given) keeps its old meaning,
    a plain title, so the list never silently opens to everyone."""
    rules = dicom_settings_rules()
    for value in _rules(DICOM_AE):
        try:
            rules.append(ae_rule_parse(value))
        except InvalidSource:
            rules.append(AeRule(value.strip()))
    return rules


def dicom_called_titles() -> list[str]:
    """fhirai's own AE titles: FHIRAI_DICOM_AE, and FHIRAI_PRIORS_AE when priors are fetched from a
    PACS (FHIRAI_PRIORS_PACS), which C-MOVEs them to that title on the same port."""
    titles = [settings.FHIRAI_DICOM_AE]
    if settings.FHIRAI_PRIORS_PACS:
        titles.append(settings.FHIRAI_PRIORS_AE)
    return titles


def dicom_association_check(*, calling_ae: str, called_ae: str, address: str) -> Refusal | None:
    """None when an association from `calling_ae` at `address` to `called_ae` may proceed, else
    why not. The calling side is checked first, so a sender not let in learns nothing about which
    called titles fhirai answers to. Titles compare without their padding spaces (PS3.5 AE)."""
    calling_ae, called_ae = calling_ae.strip(), called_ae.strip()
    rules = dicom_rules()
    if rules:
        own = [r for r in rules if r.ae_title == calling_ae]
        if not own:
            return Refusal(
                CALLING_AE_NOT_ALLOWED,
                f"association from calling AE {calling_ae!r} refused: not on the allowed list",
            )
        peer = _address_parse(address)
        if not any(r.admits(peer) for r in own):
            return Refusal(
                CALLING_ADDRESS_NOT_ALLOWED,
                f"association from calling AE {calling_ae!r} at {address} refused: "
                "that AE title is allowed only from other addresses",
            )
    if settings.FHIRAI_DICOM_CHECK_CALLED_AE and called_ae not in dicom_called_titles():
        return Refusal(
            CALLED_AE_NOT_RECOGNIZED,
            f"association to called AE {called_ae!r} refused: not one of fhirai's AE titles "
            "(FHIRAI_DICOM_CHECK_CALLED_AE)",
        )
    return None


def mllp_networks() -> list[str]:
    """The networks MLLP connections may come from ([] = any)."""
    return list(dict.fromkeys([*settings.FHIRAI_MLLP_ALLOW, *_rules(MLLP_NETWORK)]))


def ae_rule_parse(value: str) -> AeRule:
    """`AE` or `AE@address-or-network` (the last `@` separates; IPv6 may be bracketed), checked:
    InvalidSource says what is wrong, for the console, the API and FHIRAI_DICOM_ALLOW alike."""
    value = value.strip()
    title, at, where = value.rpartition("@")
    if not at:
        return AeRule(_ae_title_clean(value))
    title = _ae_title_clean(title.strip())
    where = where.strip()
    if where.startswith("["):  # [2001:db8::1], [2001:db8::]/64, as in URLs
        where = where[1:].replace("]", "", 1)
    try:
        network = ipaddress.ip_network(where, strict=False)
    except ValueError:
        raise InvalidSource(
            f"{where!r} after '@' is not an IP address or network (e.g. CT_1@10.20.1.15, PACS@10.20.0.0/24)"
        ) from None
    return AeRule(title, network)


def _ae_title_clean(value: str) -> str:
    # PS3.5 AE: 1-16 characters of the default repertoire, no backslash or control characters,
    # not only spaces (leading and trailing spaces are not significant).
    if not 0 < len(value) <= 16 or any(c == "\\" or not 0x20 <= ord(c) < 0x7F for c in value):
        raise InvalidSource(f"{value!r} is not an AE title (1 to 16 printable characters, no backslash)")
    return value


def _network_text(network: Network) -> str:
    """A single host as its address (10.20.1.15), a wider network with its prefix (10.20.0.0/24)."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _address_parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's address as a listener reports it; an IPv4 peer on a dual-stack socket
    (::ffff:10.1.2.3) is its IPv4 address, and a link-local zone (%eth0) is dropped."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def source_clean(kind: str, value: str) -> str:
    """A console or API entry checked and written one way: `AE` or `AE@network` for DICOM (a host
    as its address), a network for MLLP; InvalidSource otherwise."""
    value = value.strip()
    if kind == DICOM_AE:
        return str(ae_rule_parse(value))
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
