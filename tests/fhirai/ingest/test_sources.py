"""The allow-list entries (fhirai.ingest.sources): `AE` and `AE@address-or-network` parsed and
checked the same way for FHIRAI_DICOM_ALLOW, the console and the API, and the association
decision made from them (the listeners' part is in tests/integrations/dicom)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from fhirai.ingest.models import SourceRule
from fhirai.ingest.sources import (
    InvalidSource,
    ae_rule_parse,
    dicom_association_check,
    dicom_called_titles,
    dicom_rules,
    source_clean,
    sources_changed,
)


@pytest.fixture(autouse=True)
def _fresh_rules(settings):
    settings.FHIRAI_DICOM_ALLOW = []
    settings.FHIRAI_DICOM_CHECK_CALLED_AE = False
    sources_changed()
    yield
    sources_changed()


@pytest.mark.parametrize(
    ("entry", "written"),
    [
        ("CT_SCANNER_1", "CT_SCANNER_1"),
        ("  CT_SCANNER_1  ", "CT_SCANNER_1"),
        ("CT_SCANNER_1@10.20.1.15", "CT_SCANNER_1@10.20.1.15"),
        ("CT_SCANNER_1@10.20.1.15/32", "CT_SCANNER_1@10.20.1.15"),
        ("PACS@10.20.0.0/24", "PACS@10.20.0.0/24"),
        ("PACS@10.20.0.7/24", "PACS@10.20.0.0/24"),  # a host inside the network names the network
        ("PACS @ 10.20.0.0/24", "PACS@10.20.0.0/24"),
        ("US_3@2001:db8::/64", "US_3@2001:db8::/64"),
        ("US_3@[2001:db8::1]", "US_3@2001:db8::1"),
        ("US_3@[2001:db8::]/64", "US_3@2001:db8::/64"),
        ("A B@127.0.0.1", "A B@127.0.0.1"),  # a title may hold a space
    ],
)
def test_entries_are_checked_and_written_one_way(entry, written):
    assert source_clean("dicom-ae", entry) == written


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("", "is not an AE title"),
        ("SEVENTEEN_CHARS_X", "is not an AE title"),
        ("BAD\\AE", "is not an AE title"),
        ("TAB\tAE", "is not an AE title"),
        ("@10.0.0.1", "is not an AE title"),
        ("SEVENTEEN_CHARS_X@10.0.0.1", "is not an AE title"),
        ("CT_1@", "is not an IP address or network"),
        ("CT_1@10.20.1.300", "is not an IP address or network"),
        ("CT_1@ct-room-2.hospital.org", "is not an IP address or network"),
        ("CT_1@10.0.0.0/33", "is not an IP address or network"),
    ],
)
def test_malformed_entries_are_refused_with_the_reason(entry, says):
    with pytest.raises(InvalidSource, match=says):
        source_clean("dicom-ae", entry)


def test_a_host_entry_admits_only_that_address_and_a_network_entry_its_network():
    host, network = ae_rule_parse("CT_1@10.20.1.15"), ae_rule_parse("PACS@10.20.0.0/24")
    assert str(host) == "CT_1@10.20.1.15" and str(ae_rule_parse("CT_1")) == "CT_1"
    import ipaddress

    assert host.admits(ipaddress.ip_address("10.20.1.15"))
    assert not host.admits(ipaddress.ip_address("10.20.1.16"))
    assert network.admits(ipaddress.ip_address("10.20.0.255"))
    assert not network.admits(ipaddress.ip_address("10.20.1.1"))
    assert not network.admits(ipaddress.ip_address("::ffff:10.20.0.1"))  # mapped: see below
    assert not network.admits(None)
    assert ae_rule_parse("CT_1").admits(None)


def test_a_malformed_settings_entry_stops_startup(settings):
    settings.FHIRAI_DICOM_ALLOW = ["CT_1@10.20.1.300"]
    with pytest.raises(ImproperlyConfigured, match="FHIRAI_DICOM_ALLOW"):
        dicom_rules()


def _refused(calling: str, address: str, called: str = "FHIRAI") -> str | None:
    refusal = dicom_association_check(calling_ae=calling, called_ae=called, address=address)
    return None if refusal is None else refusal.code


@pytest.mark.django_db
def test_the_association_check_names_the_rule_that_failed(settings):
    assert _refused("ANYONE", "192.0.2.1") is None  # no list: everyone
    settings.FHIRAI_DICOM_ALLOW = ["CT_1@10.20.1.15", "CT_1@10.30.0.0/16", "MR_1"]
    assert _refused("CT_1", "10.20.1.15") is None
    assert _refused("CT_1", "10.30.9.9") is None
    assert _refused("CT_1 ", "10.20.1.15") is None  # padding is not significant (PS3.5)
    assert _refused("MR_1", "192.0.2.1") is None
    assert _refused("CT_1", "10.20.1.16") == "calling-ae-address-not-allowed"
    assert _refused("CT_2", "10.20.1.15") == "calling-ae-not-allowed"
    assert _refused("ct_1", "10.20.1.15") == "calling-ae-not-allowed"  # titles are case-sensitive


@pytest.mark.django_db
def test_an_ipv4_peer_on_a_dual_stack_socket_matches_its_ipv4_rule(settings):
    settings.FHIRAI_DICOM_ALLOW = ["CT_1@10.20.1.15", "US_1@2001:db8::/64"]
    assert _refused("CT_1", "::ffff:10.20.1.15") is None
    assert _refused("US_1", "2001:db8::7") is None
    assert _refused("US_1", "fe80::1%eth0") == "calling-ae-address-not-allowed"
    assert _refused("CT_1", "not an address") == "calling-ae-address-not-allowed"


@pytest.mark.django_db
def test_console_rows_join_the_settings_and_a_legacy_row_keeps_its_meaning(settings):
    settings.FHIRAI_DICOM_ALLOW = ["MR_1"]
    now = timezone.now()
    SourceRule.objects.create(kind="dicom-ae", value="CT_1@10.20.1.15", created_at=now, created_by="t")
    # Stored before `@` meant an address: still the plain title it was, and the list stays closed.
    SourceRule.objects.create(kind="dicom-ae", value="OLD@ROOM", created_at=now, created_by="t")
    assert [str(r) for r in dicom_rules()] == ["MR_1", "CT_1@10.20.1.15", "OLD@ROOM"]
    assert _refused("OLD@ROOM", "192.0.2.1") is None
    assert _refused("OLD", "192.0.2.1") == "calling-ae-not-allowed"


@pytest.mark.django_db
def test_the_called_ae_check_knows_fhirais_titles(settings):
    settings.FHIRAI_PRIORS_PACS = ""
    assert _refused("CT_1", "10.0.0.1", called="ANY") is None  # off by default
    settings.FHIRAI_DICOM_CHECK_CALLED_AE = True
    assert dicom_called_titles() == ["FHIRAI"]
    assert _refused("CT_1", "10.0.0.1", called="FHIRAI") is None
    assert _refused("CT_1", "10.0.0.1", called="FHIRAI_PRIORS") == "called-ae-not-recognized"
    settings.FHIRAI_PRIORS_PACS = "PACS@10.0.0.2:104"
    assert dicom_called_titles() == ["FHIRAI", "FHIRAI_PRIORS"]
    assert _refused("CT_1", "10.0.0.1", called="FHIRAI_PRIORS") is None
