"""The access audit: every API view or search of identified data, and every change made through
the API, is one AccessEvent row (who, role, what, which items). Timeline events say what happened
to an item; these say who looked at it."""

from __future__ import annotations

from collections.abc import Iterable

from django.utils import timezone

from fhirai.api.auth import Principal
from fhirai.api.models import AccessEvent

MAX_IDS = 500


def access_record(
    principal: Principal, action: str, *, kind: str = "", ids: Iterable[int] = (), detail: str = ""
) -> AccessEvent:
    """Record that `principal` did `action` on these items (ids only; `detail` carries no PHI)."""
    return AccessEvent.objects.create(
        at=timezone.now(),
        actor=principal.name[:160],
        role=principal.role,
        action=action[:32],
        item_kind=kind,
        item_ids=list(ids)[:MAX_IDS],
        detail=detail[:255],
    )


def login_record(action: str, *, username: str, detail: str) -> AccessEvent:
    """Record a console login event (failed, locked, refused) of a user name that has not
    authenticated: the actor is `login:<name as typed>`, the role empty; never the password."""
    return AccessEvent.objects.create(
        at=timezone.now(),
        actor=f"login:{username.replace(chr(0), '').strip()}"[:160],  # PostgreSQL text holds no NUL
        role="",
        action=action[:32],
        detail=detail[:255],
    )
