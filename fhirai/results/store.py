"""fhirai's own FHIR resource store: put (create or new version), read, token search."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from pydantic import ValidationError

from fhirai.errors import InvalidInput, NotFound
from fhirai.results.models import FhirResource, FhirToken
from fhirai.results.resources import VALIDATORS

Token = tuple[str, str, str]  # (search parameter, system, value)


def resource_put(content: dict, *, tokens: Iterable[Token] = (), study_id: int | None = None) -> FhirResource:
    """Store `content` under its resourceType/id: created at version 1, or a new version when the
    content changed (meta.versionId and meta.lastUpdated are set here). The search index gets the
    tokens every resource has (index_tokens) plus the caller's `tokens` for its own parameters."""
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
            FhirToken(resource=row, param=p, system=s[:255], value=v[:255])
            for p, s, v in dict.fromkeys([*index_tokens(content), *tokens])
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


class ResourceInvalid(InvalidInput):
    """A resource that does not conform: one (FHIRPath expression, message) per problem. Messages
    never carry the offending values (they may be patient data)."""

    def __init__(self, issues: list[tuple[str, str]]) -> None:
        super().__init__("invalid-resource", "; ".join(f"{e}: {m}" for e, m in issues))
        self.issues = issues


class VersionConflict(InvalidInput):
    """If-Match named a version that is not the current one (HTTP 412)."""


def resource_validate(content: Any, *, expected_type: str | None = None) -> str:
    """Check a resource against the R4B model of its type; returns the type."""
    if not isinstance(content, dict) or not isinstance(content.get("resourceType"), str):
        raise ResourceInvalid([("resourceType", "a JSON object with resourceType is required")])
    rtype = content["resourceType"]
    if expected_type and rtype != expected_type:
        raise ResourceInvalid([("resourceType", f"expected {expected_type}, got {rtype}")])
    model = VALIDATORS.get(rtype)
    if model is None:
        raise ResourceInvalid([("resourceType", f"{rtype} is not accepted here")])
    try:
        model.model_validate(content)
    except ValidationError as exc:
        raise ResourceInvalid(
            [
                (
                    ".".join(
                        [rtype, *(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"])]
                    ).replace(".[", "["),
                    err["msg"],
                )
                for err in exc.errors()[:20]
            ]
        ) from None
    return rtype


def index_tokens(content: dict[str, Any]) -> list[Token]:
    """The search index rows every resource gets: its identifiers, and the subject/patient it points
    at (by literal reference and by identifier)."""
    tokens: list[Token] = [
        ("identifier", i.get("system", ""), i["value"])
        for i in content.get("identifier", [])
        if isinstance(i, dict) and i.get("value")
    ]
    for element in ("subject", "patient"):
        ref = content.get(element)
        if isinstance(ref, dict):
            if isinstance(ref.get("reference"), str):
                tokens.append(("subject", "", ref["reference"]))
            ident = ref.get("identifier")
            if isinstance(ident, dict) and ident.get("value"):
                tokens.append(("patient-identifier", ident.get("system", ""), ident["value"]))
    return tokens


def resource_create(
    content: dict[str, Any], *, if_none_exist: list[list[TokenParam]] | None = None, rid: str | None = None
) -> tuple[FhirResource, bool]:
    """Create (server-assigned id) unless `if_none_exist` matches one resource, which is returned
    instead (R4 conditional create); more than one match is a 412."""
    rtype = resource_validate(content)
    with transaction.atomic():
        if if_none_exist:
            found = list(resource_search(rtype, if_none_exist)[:2])
            if len(found) > 1:
                raise VersionConflict(
                    "conditional-create", "the If-None-Exist criteria match several resources"
                )
            if found:
                return found[0], False
        body = {**content, "id": rid or uuid.uuid4().hex}
        return resource_put(body), True


def resource_update(
    rtype: str, rid: str, content: dict[str, Any], *, if_match: int | None = None
) -> tuple[FhirResource, bool]:
    """Update (or create with this id: R4 update-as-create); If-Match must name the current version."""
    resource_validate(content, expected_type=rtype)
    if content.get("id") != rid:
        raise ResourceInvalid([(f"{rtype}.id", "must equal the id in the URL")])
    with transaction.atomic():
        current = FhirResource.objects.select_for_update().filter(resource_type=rtype, rid=rid).first()
        if if_match is not None and (current is None or current.version_id != if_match):
            raise VersionConflict("version-conflict", f"If-Match {if_match} is not the current version")
        return resource_put(content), current is None
