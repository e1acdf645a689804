"""Console login throttling through the real login form (Django test client, PostgreSQL): lockout
by user name and by client address, the window passing (the clock moved, no sleeping), reset on
success, CSRF still enforced, and the audit of failures and lockouts without the password."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from fhirai.api.models import AccessEvent, LoginFailure

pytestmark = pytest.mark.django_db
PASSWORD = "right-Passw0rd-for-tests"
WRONG = "wrong-Passw0rd-guess-1234"


@pytest.fixture(autouse=True)
def limits(settings):
    settings.FHIRAI_LOGIN_MAX_FAILURES = 5
    settings.FHIRAI_LOGIN_MAX_FAILURES_PER_ADDRESS = 20
    settings.FHIRAI_LOGIN_WINDOW_SECONDS = 900


@pytest.fixture
def olga(db) -> User:  # noqa: ANN001 - pytest-django's db fixture
    user = User.objects.create_user("olga", password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    return user


def attempt(password: str, *, username: str = "olga", address: str = "10.0.0.7"):
    return Client(REMOTE_ADDR=address).post("/login/", {"username": username, "password": password})


@pytest.fixture
def clock(monkeypatch):
    """Moves django.utils.timezone.now (every reader of the clock: the throttle, sessions)."""
    real = timezone.now
    offset = [timedelta(0)]
    monkeypatch.setattr(timezone, "now", lambda: real() + offset[0])

    def advance(seconds: float) -> None:
        offset[0] += timedelta(seconds=seconds)

    return advance


def test_five_failures_lock_the_user_name_even_against_the_right_password(olga):
    for n in range(4):
        response = attempt(WRONG)
        assert response.status_code == 200, n
        assert b"did not match" in response.content
    fifth = attempt(WRONG)
    assert fifth.status_code == 429
    assert b"Too many failed logins. Try again in 15 minutes." in fifth.content
    assert 890 <= int(fifth["Retry-After"]) <= 901
    refused = attempt(PASSWORD)
    assert refused.status_code == 429 and "_auth_user_id" not in refused.client.session
    assert b"Too many failed logins" in refused.content
    # Another address does not help: the user name is locked.
    assert attempt(PASSWORD, address="10.0.0.8").status_code == 429
    # The lock is the user name's: another user at the same address logs in.
    User.objects.create_user("vera", password=PASSWORD)
    assert attempt(PASSWORD, username="vera").status_code == 302


def test_the_user_name_lock_ignores_case_and_surrounding_spaces(olga):
    for name in ("olga", "OLGA", " Olga", "olga ", "oLgA"):
        attempt(WRONG, username=name)
    assert attempt(PASSWORD).status_code == 429


def test_the_lock_ends_when_the_window_has_passed(olga, clock):
    for _ in range(5):
        attempt(WRONG)
    clock(600)
    assert attempt(PASSWORD).status_code == 429  # refused attempts do not extend the window
    clock(301)
    response = attempt(PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/"


def test_a_sliding_window_counts_only_recent_failures(olga, clock):
    for _ in range(4):
        attempt(WRONG)
    clock(901)  # those four have left the window
    for _ in range(4):
        assert attempt(WRONG).status_code == 200
    assert attempt(PASSWORD).status_code == 302


def test_success_resets_the_user_names_count(olga):
    for _ in range(4):
        attempt(WRONG)
    assert attempt(PASSWORD).status_code == 302
    for _ in range(4):
        assert attempt(WRONG).status_code == 200
    assert attempt(PASSWORD).status_code == 302
    assert LoginFailure.objects.filter(username="olga", counts_for_user=True).count() == 0


def test_one_address_is_locked_after_its_own_limit_of_failures(olga):
    for n in range(20):
        assert attempt(WRONG, username=f"guess{n}", address="192.0.2.9").status_code in (200, 429)
    refused = attempt(PASSWORD, address="192.0.2.9")
    assert refused.status_code == 429 and b"Too many failed logins" in refused.content
    assert attempt(PASSWORD, address="192.0.2.10").status_code == 302  # olga elsewhere is fine


def test_failures_and_lockouts_are_audited_without_the_password(olga):
    for _ in range(5):
        attempt(WRONG)
    attempt(PASSWORD)
    events = list(AccessEvent.objects.filter(actor="login:olga").order_by("id"))
    assert [e.action for e in events] == ["login.failed"] * 5 + ["login.locked", "login.refused"]
    assert all("10.0.0.7" in e.detail for e in events)
    for row in AccessEvent.objects.values():
        assert WRONG not in str(row) and PASSWORD not in str(row)
    assert "by user" in events[-2].detail


def test_csrf_is_still_enforced_on_the_login_form(olga):
    client = Client(enforce_csrf_checks=True)
    assert client.post("/login/", {"username": "olga", "password": PASSWORD}).status_code == 403
    assert LoginFailure.objects.count() == 0  # refused before the form: not a password guess
    token = client.get("/login/").cookies["csrftoken"].value
    response = client.post(
        "/login/", {"username": "olga", "password": PASSWORD, "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    locked = Client(enforce_csrf_checks=True)
    token = locked.get("/login/").cookies["csrftoken"].value
    for _ in range(5):
        locked.post("/login/", {"username": "olga", "password": WRONG, "csrfmiddlewaretoken": token})
    assert locked.post("/login/", {"username": "olga", "password": PASSWORD}).status_code == 403  # CSRF first
    page = locked.post("/login/", {"username": "olga", "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert page.status_code == 429
    assert b'name="csrfmiddlewaretoken"' in page.content  # the form is still there, for later


def test_a_nul_in_the_user_name_is_a_failed_login_not_an_error(olga):
    assert attempt(WRONG, username="ol\x00ga").status_code == 200
    assert LoginFailure.objects.get().username == "olga"


def test_the_admin_login_goes_through_the_throttled_console_login(client):
    response = client.get("/admin/login/?next=/admin/")
    assert response.status_code == 302 and response["Location"] == "/login/?next=/admin/"


@pytest.mark.django_db(transaction=True)
def test_failures_in_another_process_count_here(tmp_path):
    """Another web process (a fresh interpreter on the same database) fails five times; this one
    then refuses the right password: the count lives in the database, not in a process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from django.db import connection

    User.objects.create_user("olga", password=PASSWORD)
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    code = (
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "print([Client(REMOTE_ADDR='10.0.0.7').post('/login/', {'username': 'olga', "
        f"'password': {WRONG!r}}}).status_code for _ in range(5)])\n"
    )
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": url,
        "FHIRAI_DATA_DIR": str(tmp_path),
        "FHIRAI_ALLOWED_HOSTS": "testserver",
        "FHIRAI_LOGIN_MAX_FAILURES": "5",
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[3],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[200, 200, 200, 200, 429]"
    assert attempt(PASSWORD, address="10.0.0.99").status_code == 429


def test_the_auditor_reads_the_failures_and_the_lockout_in_the_console(olga):
    for _ in range(5):
        attempt(WRONG)
    auditor = User.objects.create_user("audrey", password=PASSWORD)
    auditor.groups.add(Group.objects.get_or_create(name="auditor")[0])
    client = Client()
    assert client.login(username="audrey", password=PASSWORD)
    page = client.get("/audit/?action=login.")
    assert page.status_code == 200
    text = page.content.decode()
    assert "login:olga" in text and "login.locked" in text and text.count("login.failed") >= 5
    assert WRONG not in text
