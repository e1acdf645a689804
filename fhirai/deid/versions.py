"""Site de-identification profile versions, as the console and the admin change them: a change is
always a new version (never an edit), checked before it is saved, and at most one is active; with
none active the settings' profile applies (fhirai.deid.profile.profile_current)."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.db.models import Max

from fhirai.deid.models import ProfileVersion
from fhirai.deid.profile import DeidProfile, safelist_parse
from fhirai.errors import FhiraiError, NotFound


class InvalidProfile(FhiraiError):
    """An option or private safelist entry that is not valid, said for the operator."""


def profile_check(options: Iterable[str], private_safelist: Iterable[str]) -> None:
    try:
        DeidProfile(options=frozenset(options))
        safelist_parse(list(private_safelist))
    except ValueError as exc:
        raise InvalidProfile(str(exc)) from None


def profile_version_create(
    name: str,
    *,
    options: Iterable[str],
    private_safelist: Iterable[str],
    note: str = "",
    activate: bool = False,
) -> ProfileVersion:
    """The next version of profile `name` (checked); active at once when `activate`."""
    options, private_safelist = sorted(set(options)), [e.strip() for e in private_safelist if e.strip()]
    name = name.strip()
    if not name or len(name) > 32:
        raise InvalidProfile("a profile name is 1 to 32 characters")
    profile_check(options, private_safelist)
    with transaction.atomic():
        latest = (
            ProfileVersion.objects.select_for_update().filter(name=name).aggregate(v=Max("version"))["v"] or 0
        )
        row = ProfileVersion.objects.create(
            name=name, version=latest + 1, options=options, private_safelist=private_safelist, note=note
        )
        if activate:
            profile_version_activate(row.pk)
            row.refresh_from_db()
    return row


def profile_version_activate(version_id: int) -> ProfileVersion:
    """Make this version the site's profile (the next studies and messages use it)."""
    with transaction.atomic():
        row = ProfileVersion.objects.filter(pk=version_id).first()
        if row is None:
            raise NotFound(f"no de-identification profile version {version_id}")
        ProfileVersion.objects.filter(active=True).exclude(pk=row.pk).update(active=False)
        ProfileVersion.objects.filter(pk=row.pk).update(active=True)
        row.refresh_from_db()
    return row
