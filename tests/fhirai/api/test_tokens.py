from __future__ import annotations

import hashlib
import importlib
import io

import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from fhirai.api.models import ApiToken
from fhirai.api.tokens import token_check, token_issue, token_revoke

pytestmark = pytest.mark.django_db


def test_issued_token_is_stored_as_its_hash_only():
    row, token = token_issue("mirth", role="operator")
    head, prefix, secret = token.split("_", 2)
    assert head == "fhirai" and prefix == row.prefix
    row.refresh_from_db()
    assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(ApiToken.objects.values().get())
    assert token_check(token).pk == row.pk
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_wrong_malformed_or_revoked_tokens_are_refused():
    row, token = token_issue("mirth", role="viewer")
    assert token_check(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert token_check("fhirai_nope_secret") is None
    assert token_check("garbage") is None
    assert token_revoke("mirth") == 1
    assert token_check(token) is None
    assert token_revoke(row.prefix) == 0


def test_unknown_role_is_refused():
    with pytest.raises(ValueError):
        token_issue("x", role="root")


def test_issue_token_command_prints_the_token_once_on_the_last_line():
    out = io.StringIO()
    call_command("issue_token", "acceptance", "--role", "admin", stdout=out, stderr=io.StringIO())
    token = out.getvalue().strip().splitlines()[-1]
    assert token_check(token).role == "admin"
    call_command("revoke_token", "acceptance", stdout=io.StringIO())
    assert token_check(token) is None
    with pytest.raises(CommandError):
        call_command("revoke_token", "acceptance", stdout=io.StringIO())


def test_the_data_migration_creates_the_role_groups():
    # Transactional tests elsewhere flush tables (migration data included): run it as migrate does.
    Group.objects.filter(name__in=["admin", "operator", "viewer", "auditor"]).delete()
    importlib.import_module("fhirai.api.migrations.0002_role_groups").create_groups(apps, None)
    assert set(Group.objects.values_list("name", flat=True)) >= {"admin", "operator", "viewer", "auditor"}
