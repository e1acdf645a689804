"""fhirai's own FHIR resource store: put (create or new version), read, token search."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from pydantic import ValidationError

from fhirai.errors import InvalidInput, NotFound
from fhirai.results.models import FhirDate, FhirResource, FhirToken, FhirVersion
from fhirai.results.resources import VALIDATORS
from fhirai.results.searchparams import date_range, index_dates, index_tokens

Token = tuple[str, str, str]  # (search parameter, system, value)


def resource_put(
    content: dict,
    *,
    tokens: Iterable[Token] = (),
    study_id: int | None = None,
    method: str = "PUT",
    fresh: bool = False,
) -> FhirResource:
    """Store `content` under its resourceType/id: created at version 1, or a new version when the
    content changed (meta.versionId and meta.lastUpdated are set here; every version is kept for
    vread and _history). The search index gets the rows of the type's search parameters
    (fhirai.results.searchparams) plus the caller's `tokens` for parameters of its own. `fresh`:
    the id was just generated, so there is no current version to lock and compare."""
    rtype, rid = content["resourceType"], content["id"]
    with transaction.atomic(savepoint=False):
        row = (
            None
            if fresh
            else FhirResource.objects.select_for_update().filter(resource_type=rtype, rid=rid).first()
        )
        body = {k: v for k, v in content.items() if k != "meta"}
        if row is not None:
            old = {k: v for k, v in row.content.items() if k != "meta"}
            old_tags = (row.content.get("meta") or {}).get("tag")
            if old == body and (content.get("meta") or {}).get("tag", old_tags) == old_tags:
                return row
            row.version_id += 1
        else:
            row = FhirResource(resource_type=rtype, rid=rid, version_id=1)
        row.last_updated = timezone.now()
        if study_id is not None or row.pk is None:
            row.study_id = study_id
        meta = {k: v for k, v in (content.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        row.content = {
            "resourceType": rtype,
            "id": rid,
            "meta": {"versionId": str(row.version_id), "lastUpdated": row.last_updated.isoformat(), **meta},
            **{k: v for k, v in body.items() if k not in ("resourceType", "id")},
        }
        row.save()
        FhirVersion.objects.create(
            resource=row,
            version_id=row.version_id,
            last_updated=row.last_updated,
            method=method,
            content=row.content,
        )
        if row.version_id > 1:
            row.tokens.all().delete()
            row.dates.all().delete()
        FhirToken.objects.bulk_create(
            FhirToken(resource=row, param=p, system=s[:255], value=v[:255])
            for p, s, v in dict.fromkeys([*index_tokens(row.content), *tokens])
        )
        FhirDate.objects.bulk_create(
            FhirDate(resource=row, param=p, low=low, high=high) for p, low, high in index_dates(row.content)
        )
    return row


def resource_read(rtype: str, rid: str) -> FhirResource:
    """The current version of one resource."""
    row = FhirResource.objects.filter(resource_type=rtype, rid=rid).first()
    if row is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    return row


def resource_version_content(row: FhirResource, version_id: int) -> dict[str, Any]:
    """The content of one version of a stored resource (the current one when it is that version)."""
    if row.version_id == version_id:
        return row.content
    kept = FhirVersion.objects.filter(resource=row, version_id=version_id).first()
    return kept.content if kept is not None else row.content


def resource_vread(rtype: str, rid: str, version: str) -> FhirVersion:
    """One version of one resource (R4 vread)."""
    row = FhirVersion.objects.filter(
        resource__resource_type=rtype, resource__rid=rid, version_id=int(version) if version.isdigit() else -1
    ).first()
    if row is None:
        if FhirResource.objects.filter(resource_type=rtype, rid=rid).exists():
            raise NotFound(f"{rtype}/{rid} has no version {version}")
        raise NotFound(f"{rtype}/{rid} is not known")
    return row


def resource_history(
    rtype: str | None = None, rid: str | None = None, *, since: datetime | None = None
) -> QuerySet[FhirVersion]:
    """Versions, newest first: of one resource, of one type, or of everything (R4 history)."""
    qs = FhirVersion.objects.select_related("resource")
    if rtype:
        qs = qs.filter(resource__resource_type=rtype)
    if rid:
        qs = qs.filter(resource__rid=rid)
        if not qs.exists() and not FhirResource.objects.filter(resource_type=rtype, rid=rid).exists():
            raise NotFound(f"{rtype}/{rid} is not known")
    if since is not None:
        qs = qs.filter(last_updated__gte=since)
    return qs.order_by("-last_updated", "-id")


class Criterion(Protocol):
    def q(self) -> Q:
        """A filter on FhirResource."""


@dataclass(frozen=True)
class TokenParam:
    """One token or reference criterion: `system|value`, `|value` (no system) or `value` (any
    system); `_id` compares the resource id."""

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

    def q(self) -> Q:
        if self.param == "_id":
            return Q(rid=self.value)
        match = FhirToken.objects.filter(param=self.param, value=self.value[:255])
        if self.system is not None:
            match = match.filter(system=self.system)
        return Q(pk__in=match.values("resource_id"))


@dataclass(frozen=True)
class StringParam:
    """A string criterion: case-insensitive starts-with, or contains with :contains."""

    param: str
    value: str
    contains: bool = False

    def q(self) -> Q:
        value = self.value.casefold()[:255]
        lookup = {"value__contains" if self.contains else "value__startswith": value}
        return Q(pk__in=FhirToken.objects.filter(param=self.param, **lookup).values("resource_id"))


DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


@dataclass(frozen=True)
class DateParam:
    """A date criterion with its R4 prefix, against the index ranges [low, high) (or against
    lastUpdated for `_lastUpdated`), by the R4 rules for ranges (search.html#prefix)."""

    param: str
    prefix: str
    low: datetime
    high: datetime

    @classmethod
    def parse(cls, param: str, raw: str) -> DateParam:
        prefix = raw[:2] if raw[:2].isalpha() else "eq"
        value = raw[2:] if raw[:2].isalpha() else raw
        if prefix not in DATE_PREFIXES:
            raise InvalidInput("invalid-search", f"{param}: prefix {prefix} is not supported")
        span = date_range(value.replace(" ", "+"))
        if span is None:
            raise InvalidInput(
                "invalid-search", f"{param}: {value!r} is not a FHIR date, dateTime or instant"
            )
        return cls(param, prefix, *span)

    def _range_q(self, low: str, high: str) -> Q:
        within = Q(**{f"{low}__gte": self.low, f"{high}__lte": self.high})
        return {
            "eq": within,
            "ne": ~within,
            "gt": Q(**{f"{high}__gt": self.high}),
            "lt": Q(**{f"{low}__lt": self.low}),
            "ge": Q(**{f"{high}__gt": self.high}) | within,
            "le": Q(**{f"{low}__lt": self.low}) | within,
            "sa": Q(**{f"{low}__gte": self.high}),
            "eb": Q(**{f"{high}__lte": self.low}),
        }[self.prefix]

    def q(self) -> Q:
        if self.param == "_lastUpdated":
            return self.instant_q("last_updated")
        match = FhirDate.objects.filter(Q(param=self.param) & self._range_q("low", "high"))
        return Q(pk__in=match.values("resource_id"))

    def instant_q(self, at: str) -> Q:
        """The criterion on a model field holding one instant (lastUpdated, an audit event's time)."""
        within = Q(**{f"{at}__gte": self.low, f"{at}__lt": self.high})
        return {
            "eq": within,
            "ne": ~within,
            "gt": Q(**{f"{at}__gte": self.high}),
            "lt": Q(**{f"{at}__lt": self.low}),
            "ge": Q(**{f"{at}__gte": self.low}),
            "le": Q(**{f"{at}__lt": self.high}),
            "sa": Q(**{f"{at}__gte": self.high}),
            "eb": Q(**{f"{at}__lt": self.low}),
        }[self.prefix]


def resource_search(rtype: str, criteria: list[list[Criterion]]) -> QuerySet[FhirResource]:
    """Resources of `rtype` matching every criterion (each criterion: any of its alternatives, the
    comma-separated values of one parameter), newest first."""
    qs = FhirResource.objects.filter(resource_type=rtype)
    for alternatives in criteria:
        either = Q()
        for criterion in alternatives:
            either |= criterion.q()
        qs = qs.filter(either)
    return qs.order_by("-last_updated", "-id")


class ResourceInvalid(InvalidInput):
    """A resource that does not conform: one (FHIRPath expression, message) per problem. Messages
    never carry the offending values (they may be patient data)."""

    def __init__(self, issues: list[tuple[str, str]]) -> None:
        super().__init__("invalid-resource", "; ".join(f"{e}: {m}" for e, m in issues))
        self.issues = issues

    @classmethod
    def from_validation(cls, rtype: str, exc: ValidationError) -> ResourceInvalid:
        """The model's errors as FHIRPath locations (Patient.name[0].family) with their messages."""
        return cls(
            [
                (
                    ".".join(
                        [rtype, *(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"])]
                    ).replace(".[", "["),
                    err["msg"],
                )
                for err in exc.errors()[:20]
            ]
        )


class VersionConflict(InvalidInput):
    """If-Match named a version that is not the current one (HTTP 412)."""


# Far beyond any real resource (a Bundle of Questionnaires with nested items stays under 40); much
# deeper nesting exhausts the validator's recursion (RecursionError, a 500) before it finds a fault.
MAX_DEPTH = 100


def _deeper_than(content: Any, limit: int) -> bool:
    stack = [(content, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((value, depth + 1) for value in item.values())
        elif isinstance(item, list):
            stack.extend((value, depth + 1) for value in item)
    return False


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
    if _deeper_than(content, MAX_DEPTH):
        raise ResourceInvalid([(rtype, f"nested deeper than {MAX_DEPTH} levels")])
    try:
        model.model_validate(content)
    except ValidationError as exc:
        raise ResourceInvalid.from_validation(rtype, exc) from None
    return rtype


def resource_create(
    content: dict[str, Any],
    *,
    if_none_exist: list[list[TokenParam]] | None = None,
    rid: str | None = None,
    fresh: bool = False,
) -> tuple[FhirResource, bool]:
    """Create (server-assigned id) unless `if_none_exist` matches one resource, which is returned
    instead (R4 conditional create); more than one match is a 412. `fresh`: `rid` was just
    generated by the caller (a transaction's POST entry)."""
    rtype = resource_validate(content)
    with transaction.atomic(savepoint=False):
        if if_none_exist:
            found = list(resource_search(rtype, if_none_exist)[:2])
            if len(found) > 1:
                raise VersionConflict(
                    "conditional-create", "the If-None-Exist criteria match several resources"
                )
            if found:
                return found[0], False
        body = {**content, "id": rid or uuid.uuid4().hex}
        return resource_put(body, method="POST", fresh=fresh or rid is None), True


def resource_update(
    rtype: str, rid: str, content: dict[str, Any], *, if_match: int | None = None
) -> tuple[FhirResource, bool]:
    """Update (or create with this id: R4 update-as-create); If-Match must name the current version."""
    resource_validate(content, expected_type=rtype)
    if content.get("id") != rid:
        raise ResourceInvalid([(f"{rtype}.id", "must equal the id in the URL")])
    with transaction.atomic(savepoint=False):
        current = FhirResource.objects.select_for_update().filter(resource_type=rtype, rid=rid).first()
        if if_match is not None and (current is None or current.version_id != if_match):
            raise VersionConflict("version-conflict", f"If-Match {if_match} is not the current version")
        return resource_put(content), current is None
