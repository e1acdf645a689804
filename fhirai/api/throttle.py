"""Console login throttling: after FHIRAI_LOGIN_MAX_FAILURES failed logins for one user name, or
FHIRAI_LOGIN_MAX_FAILURES_PER_ADDRESS from one client address, within FHIRAI_LOGIN_WINDOW_SECONDS,
further attempts are refused without checking the password until the window has passed. Failures
are database rows, so every web process sees the same count. Each failure, the lockout it starts
and each refused attempt go to the access audit (user name and address, never the password)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from fhirai.api.access import login_record
from fhirai.api.models import LoginFailure

USERNAME_MAX = 150


@dataclass(frozen=True)
class Lockout:
    """Why attempts are refused, and for how many more seconds."""

    reason: str  # "user" or "address"
    retry_after: int


def client_address(request: HttpRequest) -> str:
    """The client's address as the WSGI server gives it (behind a proxy, see FHIRAI_TRUSTED_PROXY)."""
    return (request.META.get("REMOTE_ADDR") or "unknown")[:64]


def _key(username: str) -> str:
    return username.replace("\x00", "").strip().casefold()[:USERNAME_MAX]


def _window() -> timedelta:
    return timedelta(seconds=settings.FHIRAI_LOGIN_WINDOW_SECONDS)


def _lockout_of(reason: str, rows: list[datetime], limit: int, now: datetime) -> Lockout | None:
    """Locked while `limit` or more failures fall in the window; it ends when the oldest of the
    last `limit` failures leaves it."""
    if len(rows) < limit:
        return None
    ends = sorted(rows)[-limit] + _window()
    return Lockout(reason, max(1, int((ends - now).total_seconds()) + 1))


def login_lockout(*, username: str, address: str) -> Lockout | None:
    """The lockout in force for this user name or address, or None when an attempt may go ahead."""
    now = timezone.now()
    recent = LoginFailure.objects.filter(at__gt=now - _window())
    by_user = list(recent.filter(username=_key(username), counts_for_user=True).values_list("at", flat=True))
    by_address = list(recent.filter(address=address).values_list("at", flat=True))
    return _lockout_of("user", by_user, settings.FHIRAI_LOGIN_MAX_FAILURES, now) or _lockout_of(
        "address", by_address, settings.FHIRAI_LOGIN_MAX_FAILURES_PER_ADDRESS, now
    )


def login_failed(*, username: str, address: str) -> Lockout | None:
    """Record a failed login (and the lockout it starts, if it does); returns that lockout."""
    now = timezone.now()
    LoginFailure.objects.filter(at__lte=now - _window()).delete()  # keep the table to the window
    LoginFailure.objects.create(at=now, username=_key(username), address=address)
    login_record("login.failed", username=username, detail=f"from {address}")
    lockout = login_lockout(username=username, address=address)
    if lockout is not None:
        login_record(
            "login.locked",
            username=username,
            detail=f"from {address}; by {lockout.reason} for {lockout.retry_after} s",
        )
    return lockout


def login_refused(*, username: str, address: str, lockout: Lockout) -> None:
    """Record an attempt refused while locked out (not counted as a failure: the window is not
    extended by an attacker who keeps trying)."""
    login_record(
        "login.refused",
        username=username,
        detail=f"from {address}; locked by {lockout.reason} for {lockout.retry_after} s",
    )


def login_succeeded(*, username: str) -> None:
    """A successful login resets the user name's count (its address's count stays)."""
    LoginFailure.objects.filter(username=_key(username), counts_for_user=True).update(counts_for_user=False)
