"""FHIR R4 transaction and batch Bundles (R4 3.1.0.11): a transaction is all or nothing in one
database transaction, with urn:uuid fullUrls resolved to the ids the server assigns (conditional
creates resolved first, so references point at the existing resource); a batch processes each
entry on its own. Entries: POST (create, optional ifNoneExist), PUT (update / update-as-create),
GET (read)."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction

from fhirai.errors import InvalidInput, NotFound
from fhirai.results.models import FhirResource
from fhirai.results.resources import references_rewrite
from fhirai.results.store import (
    TokenParam,
    resource_create,
    resource_read,
    resource_search,
    resource_update,
)


class EntryError(InvalidInput):
    """An entry of a transaction failed: the whole transaction is refused (with the entry's index)."""

    def __init__(self, index: int, cause: InvalidInput | NotFound) -> None:
        super().__init__(getattr(cause, "code", "not-found"), f"Bundle.entry[{index}]: {cause}")
        self.index, self.cause = index, cause


def conditions(query: str) -> list[list[TokenParam]]:
    """`identifier=sys|value&...` (ifNoneExist / If-None-Exist) as search criteria."""
    out = []
    for part in filter(None, query.lstrip("?").split("&")):
        name, _, value = part.partition("=")
        if name not in ("identifier", "_id"):
            raise InvalidInput(
                "not-supported", f"conditional criteria on {name} are not supported (identifier only)"
            )
        out.append([TokenParam.parse(name, v) for v in value.split(",")])
    return out


def bundle_process(bundle: Any) -> dict[str, Any]:
    """Process a transaction or batch Bundle and return the transaction-response / batch-response."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidInput("invalid", "POST to the base must carry a Bundle")
    kind = bundle.get("type")
    entries = bundle.get("entry") or []
    if kind == "transaction":
        with transaction.atomic():
            responses = _transaction(entries)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}
    if kind == "batch":
        return {
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [_batch_entry(e) for e in entries],
        }
    raise InvalidInput("invalid", "Bundle.type must be transaction or batch")


def _transaction(entries: list[Any]) -> list[dict[str, Any]]:
    ids: dict[str, str] = {}
    plans = []
    for index, entry in enumerate(entries):  # pass 1: every fullUrl gets its target id
        try:
            method, url, resource = _request(entry)
            rtype = url.split("/", 1)[0]
            existing = None
            if method == "POST":
                criteria = conditions(entry["request"].get("ifNoneExist", ""))
                if criteria:
                    found = list(resource_search(rtype, criteria)[:2])
                    existing = found[0] if len(found) == 1 else None
                rid = existing.rid if existing else uuid.uuid4().hex
            else:
                rid = url.split("/", 1)[1] if "/" in url else ""
            if entry.get("fullUrl"):
                ids[entry["fullUrl"]] = f"{rtype}/{rid}"
            plans.append((index, method, rtype, rid, resource, existing))
        except (InvalidInput, KeyError) as exc:
            raise EntryError(
                index, exc if isinstance(exc, InvalidInput) else InvalidInput("invalid", str(exc))
            ) from None
    out = []
    for index, method, rtype, rid, resource, existing in plans:  # pass 2: write, references resolved
        try:
            out.append(_apply(method, rtype, rid, _resolve(resource, ids), existing))
        except (InvalidInput, NotFound) as exc:
            raise EntryError(index, exc) from None
    return out


def _batch_entry(entry: Any) -> dict[str, Any]:
    try:
        method, url, resource = _request(entry)
        rtype = url.split("/", 1)[0]
        with transaction.atomic():
            if method == "POST":
                row, created = resource_create(
                    resource, if_none_exist=conditions(entry["request"].get("ifNoneExist", ""))
                )
                return _response(row, created)
            rid = url.split("/", 1)[1] if "/" in url else ""
            return _apply(method, rtype, rid, resource, None)
    except (InvalidInput, NotFound, KeyError) as exc:
        status = "404 Not Found" if isinstance(exc, NotFound) else "400 Bad Request"
        return {
            "response": {
                "status": status,
                "outcome": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "error",
                            "code": "not-found" if isinstance(exc, NotFound) else "invalid",
                            "diagnostics": str(exc),
                        }
                    ],
                },
            }
        }


def _request(entry: Any) -> tuple[str, str, dict[str, Any] | None]:
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise InvalidInput("invalid", "every entry needs a request")
    method = str(entry["request"].get("method", "")).upper()
    url = str(entry["request"].get("url", "")).split("?", 1)[0].strip("/")
    if method not in ("POST", "PUT", "GET") or not url:
        raise InvalidInput(
            "not-supported", f"request {method or '(none)'} {url or '(no url)'} is not supported"
        )
    resource = entry.get("resource")
    if method in ("POST", "PUT") and not isinstance(resource, dict):
        raise InvalidInput("invalid", f"a {method} entry needs a resource")
    if method == "PUT" and url.count("/") != 1:
        raise InvalidInput("invalid", "PUT needs Type/id")
    return method, url, resource


def _apply(
    method: str, rtype: str, rid: str, resource: dict[str, Any] | None, existing: FhirResource | None
) -> dict[str, Any]:
    if method == "GET":
        row = resource_read(rtype, rid)
        return {"resource": row.content, "response": {"status": "200 OK", "etag": f'W/"{row.version_id}"'}}
    if method == "POST":
        if existing is not None:
            return _response(existing, False)
        row, created = resource_create(resource or {}, rid=rid)
        return _response(row, created)
    row, created = resource_update(rtype, rid, {**(resource or {}), "id": rid})
    return _response(row, created)


def _response(row: FhirResource, created: bool) -> dict[str, Any]:
    return {
        "response": {
            "status": "201 Created" if created else "200 OK",
            "location": f"{row.resource_type}/{row.rid}/_history/{row.version_id}",
            "etag": f'W/"{row.version_id}"',
            "lastModified": row.last_updated.isoformat(),
        }
    }


def _resolve(node: Any, ids: dict[str, str]) -> Any:
    """urn:uuid fullUrls of this Bundle -> the Type/id they were given."""
    return references_rewrite(
        node, lambda ref: {**ref, "reference": ids.get(ref["reference"], ref["reference"])}
    )


def resource_receive(content: Any, *, source: str = "") -> FhirResource:
    """A resource an EHR pushed or notified (Subscriptions): validated and stored under its own id
    (update-as-create). Raises ResourceInvalid (fhirai.results.store) when it does not conform.
    `source` names where it came from, for the record."""
    if not isinstance(content, dict) or not content.get("id"):
        raise InvalidInput("invalid", "a received resource needs resourceType and id")
    row, _ = resource_update(content.get("resourceType", ""), content["id"], content)
    return row
