"""The FHIR facade at /fhir/ driven through Django's test client (the full request stack: URLs,
content negotiation, the create/update/transaction path, the search parameter parser, PostgreSQL).
Whatever the body or query, the answer is a resource or Bundle (2xx) or an OperationOutcome (4xx);
never a 500 or an exception."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import strategies as st

from fhirai.results.searchparams import BY_NAME
from integrations.fhir.views import TYPES
from tests.fuzz.budget import fuzz_target

pytestmark = pytest.mark.django_db
JSON_TYPES = ["application/fhir+json", "application/json", "application/fhir+json; charset=utf-8"]
XML_TYPES = ["application/fhir+xml", "application/xml", "text/xml"]
OTHER_TYPES = ["text/plain", "", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]
PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:1.2.3", "value": "P1"}],
    "name": [{"family": "Doe", "given": ["Jo"]}],
    "birthDate": "1970-01-02",
    "gender": "female",
}
OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-01-02T03:04:05Z",
    "valueQuantity": {"value": 1.5, "unit": "mm"},
}
BUNDLE = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {"fullUrl": "urn:uuid:1", "resource": PATIENT, "request": {"method": "POST", "url": "Patient"}},
        {"resource": OBSERVATION, "request": {"method": "POST", "url": "Observation"}},
    ],
}
XML_PATIENT = (
    '<Patient xmlns="http://hl7.org/fhir"><identifier><system value="urn:oid:1.2.3"/><value value="P1"/>'
    '</identifier><name><family value="Doe"/></name><birthDate value="1970-01-02"/></Patient>'
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "",
            "\x00",
            "Patient",
            "Patient/",
            "urn:uuid:1",
            "1970-13-45",
            "9" * 40,
            "final",
            "9999-12-31",
            "x" * 300,
        ]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@st.composite
def mutated_resource(draw: st.DrawFn) -> object:
    """A valid resource with values replaced at random paths."""
    doc = json.loads(json.dumps(draw(st.sampled_from([PATIENT, OBSERVATION, BUNDLE]))))
    for _ in range(draw(st.integers(1, 4))):
        node = doc
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, dict | list) and draw(st.booleans()):
                node = child
                continue
            if draw(st.integers(0, 5)) == 0 and isinstance(node, dict):
                node[draw(st.text(max_size=10))] = draw(json_values)
            elif draw(st.integers(0, 5)) == 0 and isinstance(node, dict):
                del node[key]
            else:
                node[key] = draw(json_values)
            break
    return doc


@st.composite
def deep_resource(draw: st.DrawFn) -> bytes:
    """Nested extensions (or bare arrays) of any depth, written without json.dumps' recursion."""
    levels = draw(st.integers(0, 3000))
    if draw(st.booleans()):
        return b"[" * levels + b"]" * levels
    inner = b'{"url": "u", "valueString": "v"}'
    return (
        b'{"resourceType": "Patient", "extension": ['
        + b'{"url": "u", "extension": [' * levels
        + inner
        + b"]}" * levels
        + b"]}"
    )


@st.composite
def json_body(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(deep_resource())
    doc = draw(mutated_resource() | json_values)
    raw = json.dumps(doc).encode()
    if draw(st.integers(0, 6)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@st.composite
def xml_body(draw: st.DrawFn) -> bytes:
    raw = XML_PATIENT
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(raw)))
        piece = draw(
            st.sampled_from(
                [
                    "<",
                    ">",
                    '"',
                    "&amp;",
                    "&x;",
                    '<gender value="x"/>',
                    '<birthDate value="19"/>',
                    '<extension url="u"><valueString value="v"/></extension>',
                    "<unknown/>",
                    "<![CDATA[x]]>",
                    "\x00",
                ]
            )
            | st.text(max_size=10)
        )
        raw = raw[:at] + piece + raw[at:]
    prolog = draw(
        st.sampled_from(
            [
                "",
                '<?xml version="1.0" encoding="UTF-8"?>',
                '<!DOCTYPE Patient [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
                '<!DOCTYPE P [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>',
                '<?xml version="1.0" encoding="UTF-16"?>',
            ]
        )
    )
    return (prolog + raw).encode("utf-8", errors="replace")


def assert_fhir_answer(response) -> None:  # noqa: ANN001
    # 503 would tell the client to retry what can never succeed: the database is up here.
    assert response.status_code < 500, response.content[:300]
    if response.status_code >= 400:
        body = json.loads(response.content)
        assert body["resourceType"] == "OperationOutcome" and body["issue"], body


@fuzz_target(
    "fhir_create_json",
    ci=150,
    rtype=st.sampled_from([*TYPES, "Bundle", "Nope"]),
    body=json_body(),
    content_type=st.sampled_from(JSON_TYPES + OTHER_TYPES),
    method=st.sampled_from(["post", "put"]),
)
def test_json_bodies_give_a_resource_or_an_outcome(client, rtype, body, content_type, method):
    if method == "put":
        response = client.put(f"/fhir/{rtype}/fuzz-1", data=body, content_type=content_type)
    else:
        path = "/fhir/" if rtype == "Bundle" else f"/fhir/{rtype}"
        response = client.post(path, data=body, content_type=content_type)
    assert_fhir_answer(response)


@fuzz_target(
    "fhir_create_xml",
    ci=100,
    body=xml_body() | st.binary(max_size=200),
    content_type=st.sampled_from(XML_TYPES),
    fmt=st.sampled_from(["", "?_format=xml", "?_format=json"]),
)
def test_xml_bodies_give_a_resource_or_an_outcome(client, body, content_type, fmt):
    response = client.post(f"/fhir/Patient{fmt}", data=body, content_type=content_type)
    assert response.status_code < 500, response.content[:300]
    if response.status_code >= 400 and fmt != "?_format=xml":
        assert json.loads(response.content)["resourceType"] == "OperationOutcome"
    if response.status_code >= 400 and fmt == "?_format=xml":
        assert b"OperationOutcome" in response.content


values = (
    st.text(max_size=30)
    | st.text(alphabet="0123456789-:TZ+.|,\x00", max_size=30)
    | st.sampled_from(
        [
            "",
            "\x00",
            "eq2026",
            "ge2026-01-01T00:00:00Z",
            "lt99999",
            "2026-02-30",
            "sa1970-01",
            "urn:oid:1.2|P1",
            "|",
            "a|b|c",
            "Patient/",
            "Patient/1/_history/2",
            "http://x/fhir/Patient/1",
            ",",
            "9" * 30,
            "-1",
            "9999-12-31",
            "0001-01-01T00:00:00+14:00",
            "99999999999999999999",
        ]
    )
)


@st.composite
def search_query(draw: st.DrawFn) -> tuple[str, str]:
    """A type and a query string: mostly the type's own parameters, some control and unknown ones."""
    rtype = draw(st.sampled_from([*TYPES, "Nope"]))
    own = sorted(BY_NAME.get(rtype, {"_id": None}))
    control = ["_count", "_offset", "_sort", "_summary", "_include", "_format", "_pretty", "bogus"]
    pairs = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 9))
        if kind < 6:
            name = draw(st.sampled_from(own))
        elif kind < 8:
            name = draw(st.sampled_from(control))
        else:
            name = draw(st.text(max_size=8))
        if draw(st.integers(0, 3)) == 0:
            name += draw(st.sampled_from([":contains", ":identifier", ":Patient", ":exact", ":", ":missing"]))
        pairs.append(f"{quote(name)}={quote(draw(values))}")
    return rtype, "&".join(pairs)


@fuzz_target(
    "fhir_search",
    ci=300,
    query=search_query(),
    strict=st.booleans(),
    post=st.booleans(),
)
def test_search_parameters_give_a_bundle_or_an_outcome(client, query, strict, post):
    rtype, qs = query
    headers = {"HTTP_PREFER": "handling=strict"} if strict else {}
    if post:
        response = client.post(
            f"/fhir/{rtype}/_search", data=qs, content_type="application/x-www-form-urlencoded", **headers
        )
    else:
        response = client.get(f"/fhir/{rtype}?{qs}", **headers)
    assert_fhir_answer(response)
    if response.status_code == 200 and "_format=xml" not in qs:
        body = json.loads(response.content)
        assert body["resourceType"] in ("Bundle", "OperationOutcome")
