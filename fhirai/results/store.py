"""fhirai's own FHIR resource store: put (create or new version), read, token search."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from fhirai.errors import InvalidInput, NotFound
from fhirai.results.models import FhirResource, FhirToken

Token = tuple[str, str, str]  # (search parameter, system, value)


def resource_put(content: dict, *, tokens: list[Token], study_id: int | None = None) -> FhirResource:
    """Store `content` under its resourceType/id: created at version 1, or a new version when the
    content changed (meta.versionId and meta.lastUpdated are set here)."""
    rtype, rid = content["resourceType"], content["id"]
    with transaction.atomic():
        row = FhirResource.objects.select_for_update().filter(resource_type=rtype, rid=rid).first()
        body = {k: v for k, v in content.items() if k != "meta"}
        if row is not None:
            old = {k: v for k, v in row.content.items() if k != "meta"}
            if old == body:
                return row
            row.version_id += 1
        else:
            row = FhirResource(resource_type=rtype, rid=rid, version_id=1)
        row.last_updated = timezone.now()
        row.study_id = study_id
        meta = dict(content.get("meta") or {})
        meta.update(versionId=str(row.version_id), lastUpdated=row.last_updated.isoformat())
        row.content = {
            "resourceType": rtype,
            "id": rid,
            "meta": meta,
            **{k: v for k, v in body.items() if k not in ("resourceType", "id")},
        }
        row.save()
        row.tokens.all().delete()
        FhirToken.objects.bulk_create(
            FhirToken(resource=row, param=p, system=s[:255], value=v[:255]) for p, s, v in tokens
        )
    return row


def resource_read(rtype: str, rid: str) -> FhirResource:
    """The current version of one resource."""
    row = FhirResource.objects.filter(resource_type=rtype, rid=rid).first()
    if row is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    return row


@dataclass(frozen=True)
class TokenParam:
    """One token-search criterion: `system|value`, `|value` (no system) or `value` (any system)."""

    param: str
    system: str | None
    value: str

    @classmethod
    def parse(cls, param: str, raw: str) -> TokenParam:
        if not raw:
            raise InvalidInput("invalid-search", f"search parameter {param} has no value")
        if "|" in raw:
            system, value = raw.split("|", 1)
            if not value:
                raise InvalidInput("invalid-search", f"{param}: a system with no value is not supported")
            return cls(param, system, value)
        return cls(param, None, raw)


def resource_search(rtype: str, criteria: list[list[TokenParam]]) -> QuerySet[FhirResource]:
    """Resources of `rtype` matching every criterion (each criterion: any of its values), newest first."""
    qs = FhirResource.objects.filter(resource_type=rtype)
    for alternatives in criteria:
        ids: set[int] = set()
        for token in alternatives:
            match = FhirToken.objects.filter(
                param=token.param, value=token.value, resource__resource_type=rtype
            )
            if token.system is not None:
                match = match.filter(system=token.system)
            ids.update(match.values_list("resource_id", flat=True))
        qs = qs.filter(pk__in=ids)
    return qs.order_by("-last_updated", "-id")
