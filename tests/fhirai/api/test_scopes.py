"""SMART system scopes: parsing v1 and v2, narrowing by the client's registration and its role."""

from __future__ import annotations

from fhirai.api.scopes import scope_parse, scopes_allow, scopes_grant, scopes_parse, scopes_text


def test_v2_and_v1_forms_parse_to_permissions():
    assert scope_parse("system/Observation.rs").permissions == "rs"
    assert scope_parse("system/*.cruds").permissions == "cruds"
    assert scope_parse("system/*.read").permissions == "rs"
    assert scope_parse("system/*.write").permissions == "cud"
    assert scope_parse("system/*.*").permissions == "cruds"


def test_unknown_or_unsupported_scopes_are_not_scopes():
    for text in (
        "patient/Observation.rs",  # needs a launch context
        "user/*.read",
        "system/Observation.sr",  # v2 letters come in cruds order
        "system/Observation.",
        "system/Observation.rs?category=laboratory",  # granular: not supported
        "openid",
        "system/observation.rs",
    ):
        assert scope_parse(text) is None, text


def test_grant_narrows_wildcards_to_what_the_client_may_have():
    granted = scopes_grant(
        "system/*.cruds", allowed="system/Observation.rs system/Patient.r", role="operator"
    )
    assert scopes_text(granted) == "system/Observation.rs system/Patient.r"


def test_a_request_granted_in_full_is_answered_in_its_own_v1_words():
    granted = scopes_grant("system/*.read system/Observation.write", allowed="system/*.cruds", role="admin")
    assert scopes_text(granted) == "system/*.read system/Observation.write"


def test_role_ceiling_auditor_gets_the_audit_trail_only_and_viewer_nothing():
    auditor = scopes_grant("system/*.read", allowed="system/*.cruds", role="auditor")
    assert scopes_text(auditor) == "system/AuditEvent.rs"
    assert scopes_grant("system/*.read", allowed="system/*.cruds", role="viewer") == ()


def test_allow_checks_type_and_interaction():
    scopes = scopes_parse("system/Observation.rs system/*.c")
    assert scopes_allow(scopes, "Observation", "r") and scopes_allow(scopes, "Observation", "s")
    assert scopes_allow(scopes, "Patient", "c")
    assert not scopes_allow(scopes, "Patient", "r")
    assert not scopes_allow(scopes, "Observation", "u")
    assert not scopes_allow(scopes, "*", "s")  # system-wide history needs a wildcard search scope
