"""FHIR JSON and XML on the wire (R4 http.html#mime-type): which one a request asks for
(`_format`, else Accept), XML bodies read into the JSON form the domain works with, and JSON
responses written as XML when XML was asked for. XML goes through the fhir.resources models, so
what is written is schema-shaped FHIR XML (namespace http://hl7.org/fhir)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse
from fhir.resources.R4B import get_fhir_model_class
from lxml import etree
from pydantic import ValidationError

from fhirai.results.store import ResourceInvalid
from integrations.fhir import outcome

FHIR_JSON = "application/fhir+json; charset=utf-8"
FHIR_XML = "application/fhir+xml; charset=utf-8"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "json", "text/json")
XML_TYPES = ("application/fhir+xml", "application/xml", "application/xml+fhir", "xml", "text/xml")
NS = "{http://hl7.org/fhir}"


def wanted(request: HttpRequest) -> str:
    """'json' or 'xml' for the response; ValueError names a _format fhirai cannot write."""
    fmt = request.GET.get("_format", "").split(";")[0].strip().lower()
    if fmt:
        if fmt in JSON_TYPES:
            return "json"
        if fmt in XML_TYPES:
            return "xml"
        raise ValueError(f"_format {fmt} is not supported (json or xml)")
    accept = request.headers.get("Accept", "").lower()
    for part in accept.split(","):
        media = part.split(";")[0].strip()
        if media in JSON_TYPES or media in ("*/*", "application/*", ""):
            return "json"
        if media in XML_TYPES:
            return "xml"
    if accept and "html" not in accept:
        raise ValueError(
            "Accept names no format this server writes (application/fhir+json, application/fhir+xml)"
        )
    return "json"


def negotiated(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Answer in the format the request asks for: 406 when none fhirai writes, XML written from the
    view's JSON, `_pretty=true` indented JSON."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            fmt = wanted(request)
        except ValueError as exc:
            return outcome.outcome(outcome.NOT_ACCEPTABLE, str(exc))
        response = view(request, *args, **kwargs)
        if not response.get("Content-Type", "").startswith("application/fhir+json") or not response.content:
            return response
        if fmt == "xml":
            response.content = to_xml(json.loads(response.content))
            response["Content-Type"] = FHIR_XML
        elif request.GET.get("_pretty") == "true":
            response.content = json.dumps(json.loads(response.content), indent=2, ensure_ascii=False).encode()
        return response

    return wrapper


def to_xml(body: dict[str, Any]) -> bytes:
    """A resource (any R4 type, Bundles with their entries included) as FHIR XML."""
    model = get_fhir_model_class(body["resourceType"])
    return model.model_validate(body).model_dump_xml()


def from_xml(raw: bytes) -> dict[str, Any]:
    """A FHIR XML resource as FHIR JSON; ResourceInvalid (with locations) when it is not one."""
    try:
        root = etree.fromstring(raw, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise ResourceInvalid([("(body)", f"not well-formed XML: line {exc.lineno}")]) from None
    if not isinstance(root.tag, str) or not root.tag.startswith(NS):
        raise ResourceInvalid([("(body)", "the root element must be a FHIR resource in http://hl7.org/fhir")])
    rtype = root.tag[len(NS) :]
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError):
        raise ResourceInvalid([("resourceType", f"{rtype} is not an R4 resource")]) from None
    try:
        resource = model.model_validate_xml(raw)
    except ValidationError as exc:
        raise ResourceInvalid.from_validation(rtype, exc) from None
    except KeyError as exc:  # fhir.resources meets an element its type does not define
        raise ResourceInvalid([(rtype, f"cannot be read: unknown element {str(exc)[:64]}")]) from None
    except (ValueError, TypeError, AttributeError, IndexError, etree.LxmlError) as exc:
        raise ResourceInvalid([(rtype, f"cannot be read: {type(exc).__name__}")]) from None
    return json.loads(resource.model_dump_json(exclude_none=True))


def body_read(request: HttpRequest) -> Any:
    """The request body as FHIR JSON, from JSON or XML; ValueError for other media types."""
    media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media in XML_TYPES:
        return from_xml(request.body)
    if media in JSON_TYPES:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ResourceInvalid([("(body)", "the body is not valid JSON")]) from None
        if has_nul(body):
            raise ResourceInvalid([("(body)", "a string or name carries a NUL character (\\u0000)")])
        return body
    raise ValueError(f"send application/fhir+json or application/fhir+xml, not {media or 'no Content-Type'}")


def has_nul(value: Any) -> bool:
    """A NUL anywhere in a JSON document: FHIR strings exclude it, and PostgreSQL cannot keep one."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
