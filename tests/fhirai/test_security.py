"""Security headers on every kind of HTTP response (console, API, FHIR, DICOMweb, health, static
files, errors), and the HTTPS settings: FHIRAI_HTTPS read in a fresh process (settings are read
once, at start-up), their effect on cookies and headers through the real middleware."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from fhirai.api.tokens import token_issue

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-for-tests-only"


def _csp(response) -> dict[str, str]:
    policy = response["Content-Security-Policy"]
    return {d.split()[0]: d.partition(" ")[2] for d in (p.strip() for p in policy.split(";")) if d}


def _assert_hardened(response, where: str) -> None:
    csp = _csp(response)
    assert csp["default-src"] == "'self'", where
    assert csp["script-src"] == "'self'", where
    assert csp["style-src"] == "'self'", where
    assert csp["object-src"] == "'none'", where
    assert csp["frame-ancestors"] == "'none'", where
    assert csp["base-uri"] == "'self'" and csp["form-action"] == "'self'", where
    assert "unsafe-inline" not in response["Content-Security-Policy"], where
    assert "unsafe-eval" not in response["Content-Security-Policy"], where
    assert response["X-Frame-Options"] == "DENY", where
    assert response["X-Content-Type-Options"] == "nosniff", where
    assert response["Referrer-Policy"] in ("same-origin", "no-referrer"), where
    assert response["Cross-Origin-Opener-Policy"] == "same-origin", where


def _operator() -> Client:
    user = User.objects.create_user("olga", password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    client = Client()
    assert client.login(username="olga", password=PASSWORD)
    return client


def test_every_kind_of_response_carries_the_security_headers(settings):
    settings.FHIRAI_REQUIRE_TOKENS = True
    anonymous, operator = Client(), _operator()
    _, token = token_issue("engine", role="viewer")
    auth = {"Authorization": f"Bearer {token}"}
    seen = {
        "/login/": anonymous.get("/login/"),
        "/ (to login)": anonymous.get("/"),
        "/ (dashboard)": operator.get("/"),
        "/items/": operator.get("/items/?kind=study"),
        "/config/": operator.get("/config/"),
        "/audit/ (403)": operator.get("/audit/"),
        "/static/console/console.css": anonymous.get("/static/console/console.css"),
        "/api/health": anonymous.get("/api/health"),
        "/api/studies (401)": anonymous.get("/api/studies"),
        "/api/studies": anonymous.get("/api/studies", headers=auth),
        "/api/docs": operator.get("/api/docs"),
        "/fhir/metadata": anonymous.get("/fhir/metadata"),
        "/fhir/Patient": anonymous.get("/fhir/Patient", headers=auth),
        "/fhir/Patient (bad token)": anonymous.get("/fhir/Patient", headers={"Authorization": "Bearer x"}),
        "/dicomweb/studies (401)": anonymous.get("/dicomweb/studies"),
        "/healthz": anonymous.get("/healthz"),
        "/no-such-page (404)": anonymous.get("/no-such-page"),
        "/login/ POST without CSRF (403)": Client(enforce_csrf_checks=True).post(
            "/login/", {"username": "olga", "password": PASSWORD}
        ),
        "/admin/": operator.get("/admin/"),
    }
    statuses = {where: r.status_code for where, r in seen.items()}
    assert statuses["/ (dashboard)"] == 200 and statuses["/api/studies"] == 200, statuses
    assert statuses["/fhir/metadata"] == 200 and statuses["/healthz"] == 200, statuses
    assert statuses["/static/console/console.css"] == 200, statuses
    assert statuses["/login/ POST without CSRF (403)"] == 403, statuses
    for where, response in seen.items():
        _assert_hardened(response, where)


def test_the_console_templates_have_no_inline_script_style_or_event_handlers():
    """What the CSP forbids, checked at the source: a new template that needs it fails here
    before a browser refuses it."""
    import re

    offenders = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        text = path.read_text()
        for pattern in (
            r"<script(?![^>]*\bsrc=)[^>]*>",
            r"<style",
            r"\sstyle=",
            r"\son[a-z]+=",
            r"javascript:",
        ):
            if re.search(pattern, text, re.IGNORECASE):
                offenders.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert offenders == []


def _settings_in_a_fresh_process(tmp_path: Path, **env: str) -> dict:
    """fhirai.settings reads the environment once, at import: import it in a new interpreter with
    `env`, and ask the real middleware for a response over HTTPS and over HTTP."""
    code = """
import json, django
from django.conf import settings
django.setup()
from django.test import Client
names = ["SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SESSION_COOKIE_HTTPONLY",
         "SESSION_COOKIE_SAMESITE", "CSRF_COOKIE_SAMESITE", "SESSION_COOKIE_AGE",
         "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_SSL_REDIRECT",
         "SECURE_PROXY_SSL_HEADER"]
out = {n: getattr(settings, n, None) for n in names}
secure = Client().get("/static/console/console.css", secure=True)
plain = Client().get("/static/console/console.css")
proxied = Client().get("/static/console/console.css", headers={"X-Forwarded-Proto": "https"})
out["hsts"] = secure.headers.get("Strict-Transport-Security")
out["plain_status"], out["plain_location"] = plain.status_code, plain.headers.get("Location")
out["proxied_hsts"] = proxied.headers.get("Strict-Transport-Security")
print(json.dumps(out))
"""
    full = {
        k: v for k, v in os.environ.items() if not k.startswith(("FHIRAI_HTTPS", "FHIRAI_HSTS", "FHIRAI_SSL"))
    }
    full |= {"DJANGO_SETTINGS_MODULE": "tests.settings", "FHIRAI_DATA_DIR": str(tmp_path)}
    full |= {"FHIRAI_ALLOWED_HOSTS": "testserver"} | env
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_plain_http_by_default_cookies_still_httponly_and_lax(tmp_path):
    got = _settings_in_a_fresh_process(tmp_path)
    assert got["SESSION_COOKIE_SECURE"] is False and got["CSRF_COOKIE_SECURE"] is False
    assert got["SESSION_COOKIE_HTTPONLY"] is True
    assert got["SESSION_COOKIE_SAMESITE"] == "Lax" and got["CSRF_COOKIE_SAMESITE"] == "Lax"
    assert got["SESSION_COOKIE_AGE"] == 8 * 3600
    assert got["SECURE_HSTS_SECONDS"] == 0 and got["hsts"] is None
    assert got["SECURE_SSL_REDIRECT"] is False and got["plain_status"] == 200


def test_https_turns_on_secure_cookies_and_hsts(tmp_path):
    got = _settings_in_a_fresh_process(
        tmp_path, FHIRAI_HTTPS="1", FHIRAI_HSTS_INCLUDE_SUBDOMAINS="1", FHIRAI_SESSION_SECONDS="3600"
    )
    assert got["SESSION_COOKIE_SECURE"] is True and got["CSRF_COOKIE_SECURE"] is True
    assert got["SESSION_COOKIE_AGE"] == 3600
    assert got["hsts"] == "max-age=31536000; includeSubDomains"
    assert got["plain_status"] == 200  # no redirect unless asked for
    assert got["proxied_hsts"] is None  # X-Forwarded-Proto is not trusted unless configured


def test_https_behind_a_proxy_with_redirect(tmp_path):
    got = _settings_in_a_fresh_process(
        tmp_path,
        FHIRAI_HTTPS="true",
        FHIRAI_HSTS_SECONDS="600",
        FHIRAI_SSL_REDIRECT="true",
        FHIRAI_PROXY_SSL_HEADER="X-Forwarded-Proto",
    )
    assert got["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert got["hsts"] == "max-age=600" and got["proxied_hsts"] == "max-age=600"
    assert got["plain_status"] == 301 and got["plain_location"].startswith("https://")


def test_a_redirect_without_https_stops_start_up(tmp_path):
    with pytest.raises(AssertionError, match="FHIRAI_SSL_REDIRECT and FHIRAI_PROXY_SSL_HEADER need"):
        _settings_in_a_fresh_process(tmp_path, FHIRAI_SSL_REDIRECT="1")


def test_session_and_csrf_cookies_follow_the_secure_settings(settings):
    """The cookies a login sets, with the values FHIRAI_HTTPS gives (checked in the tests above)."""
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    User.objects.create_user("olga", password=PASSWORD)
    client = Client(enforce_csrf_checks=True)
    page = client.get("/login/", secure=True)
    csrf = page.cookies["csrftoken"]
    assert csrf["secure"] and csrf["samesite"] == "Lax"
    response = client.post(
        "/login/",
        {"username": "olga", "password": PASSWORD, "csrfmiddlewaretoken": csrf.value},
        secure=True,
        headers={"Referer": "https://testserver/login/"},
    )
    assert response.status_code == 302, response.content[:500]
    session = response.cookies["sessionid"]
    assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"
    assert int(session["max-age"]) == settings.SESSION_COOKIE_AGE
