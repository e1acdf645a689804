"""`manage.py console_user`: a login with one role, passwords checked, deactivation."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

pytestmark = pytest.mark.django_db


def test_a_console_user_gets_one_role_and_can_log_in(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("long-enough-passphrase-7\n")
    call_command("console_user", "olga", "--role", "viewer", "--password-file", str(secret))
    call_command("console_user", "olga", "--role", "operator")  # a role change keeps the password
    user = User.objects.get(username="olga")
    assert list(user.groups.values_list("name", flat=True)) == ["operator"]
    client = Client()
    assert client.login(username="olga", password="long-enough-passphrase-7")
    assert client.get("/config/").status_code == 200
    call_command("console_user", "olga", "--deactivate")
    assert not Client().login(username="olga", password="long-enough-passphrase-7")


def test_weak_passwords_and_missing_roles_are_refused(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("12345678\n"))
    with pytest.raises(CommandError, match="too short|too common|entirely numeric"):
        call_command("console_user", "vera", "--role", "viewer", "--password-file", "-")
    with pytest.raises(CommandError, match="needs --role"):
        call_command("console_user", "nobody")
    assert not User.objects.exists()
