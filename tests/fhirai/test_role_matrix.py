"""The role matrix a security review asks for: for each role (and no credentials), each console page
and action, each API operation and each FHIR interaction, allowed or refused; identified data only
for the roles that may see it; every view of identified data leaves an access record, which the
audit trail at /fhir/AuditEvent shows.

The policy is written out here, route by route, and the test fails when a route exists that the
matrix does not name: a new page or operation cannot ship unclassified."""

from __future__ import annotations

import json
import re
from base64 import b64encode
from urllib.parse import quote

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from fhirai.api.clients import client_register
from fhirai.api.models import AccessEvent
from fhirai.api.tokens import token_issue
from fhirai.api.views import api
from fhirai.ingest.models import Message, Study

pytestmark = pytest.mark.django_db

ROLES = ("admin", "operator", "auditor", "viewer")
ALL = frozenset(ROLES)
PHI = frozenset({"admin", "operator"})
AUDIT = frozenset({"admin", "auditor"})
OPEN = None  # no credentials needed
MISSING = 999999  # an id nothing has: allowed callers get 404, refused ones 403 before any lookup

NAME = "Matrixperson^Mara"
MRN = "MRN-MATRIX-1"

# --- the policy -----------------------------------------------------------------------------------

API = {
    "GET /api/health": OPEN,
    "GET /api/studies": ALL,
    "GET /api/studies/{study_id}": ALL,
    "POST /api/studies/{study_id}/retry": PHI,
    "POST /api/studies/{study_id}/replay": PHI,
    "GET /api/messages": ALL,
    "GET /api/messages/{message_id}": ALL,
    "POST /api/messages/{message_id}/retry": PHI,
    "POST /api/messages/{message_id}/replay": PHI,
    "GET /api/deliveries": ALL,
    "POST /api/deliveries/{delivery_id}/retry": PHI,
    "GET /api/models": ALL,
    "PATCH /api/models/{model_id}": PHI,
    "GET /api/destinations": PHI,
    "PUT /api/destinations/fhir-upstream": PHI,
    "PUT /api/destinations/mllp/{peer}": PHI,
    "PUT /api/destinations/dicom/{peer}": PHI,
    "GET /api/webhooks/dead": PHI,
    "POST /api/webhooks/deliveries/{delivery_id}/replay": PHI,
    "GET /api/audit": AUDIT,
    "GET /api/reports": ALL,
    "GET /api/reports/{report_id}": ALL,
    "POST /api/reports/{report_id}/retry": PHI,
    "GET /api/rejections": ALL,
    "GET /api/sources": PHI,
    "POST /api/sources/dicom-ae": PHI,
    "POST /api/sources/mllp-network": PHI,
    "DELETE /api/sources/{rule_id}": PHI,
    "GET /api/webhooks/subscriptions": PHI,
    "PUT /api/webhooks/subscriptions/{name}": PHI,
    "DELETE /api/webhooks/subscriptions/{name}": PHI,
    "GET /api/optouts": PHI,
    "PUT /api/optouts": PHI,
}
API_BODIES = {
    "PATCH /api/models/{model_id}": {"enabled": True},
    "PUT /api/destinations/fhir-upstream": {"url": "http://127.0.0.1:9/fhir", "enabled": False},
    "PUT /api/destinations/mllp/{peer}": {"host": "127.0.0.1", "port": 9, "enabled": False},
    "PUT /api/destinations/dicom/{peer}": {"aet": "PACS", "host": "127.0.0.1", "port": 9, "enabled": False},
    "POST /api/sources/dicom-ae": {"value": "MATRIXSCU"},
    "POST /api/sources/mllp-network": {"value": "127.0.0.1/32"},
    "PUT /api/webhooks/subscriptions/{name}": {"url": "https://example.org/hook", "events": ["item.failed"]},
    "PUT /api/optouts": {"mrn": "MRN-MATRIX-OPT", "active": False},
}

# Console: (method, route name) -> roles. GETs are pages, POSTs are actions.
UI = {
    ("GET", "dashboard"): ALL,
    ("GET", "worklist"): ALL,
    ("GET", "study"): ALL,
    ("GET", "study-preview"): ALL,
    ("GET", "message"): ALL,
    ("GET", "report"): ALL,
    ("POST", "bulk-retry"): PHI,
    ("POST", "study-retry"): PHI,
    ("POST", "study-replay"): PHI,
    ("POST", "message-retry"): PHI,
    ("POST", "message-replay"): PHI,
    ("POST", "report-retry"): PHI,
    ("POST", "delivery-retry"): PHI,
    ("GET", "config"): PHI,
    ("POST", "destination-save"): PHI,
    ("POST", "destination-action"): PHI,
    ("POST", "model-toggle"): PHI,
    ("POST", "model-accepts"): PHI,
    ("POST", "profile-create"): PHI,
    ("POST", "profile-activate"): PHI,
    ("POST", "source-rule"): PHI,
    ("GET", "subscription-new"): PHI,
    ("GET", "subscription-edit"): PHI,
    ("GET", "webhooks"): PHI,
    ("POST", "webhook-replay"): PHI,
    ("GET", "audit"): AUDIT,
    ("GET", "login"): OPEN,
    ("POST", "logout"): OPEN,
}

# Machine routes outside /fhir/ and /api/: OAuth2 for machine clients. Open: the token endpoint
# authenticates the client itself (a client assertion or secret, never a session or a Bearer token);
# discovery comes before any credential.
MACHINE = {
    ("POST", "oauth-token"): OPEN,
    ("GET", "smart-configuration"): OPEN,
}

# FHIR: (method, path, body) -> roles.
PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:matrix", "value": "P-1"}]}
BUNDLE = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [{"resource": PATIENT, "request": {"method": "POST", "url": "Patient"}}],
}
FHIR = [
    ("GET", "/fhir/metadata", None, OPEN),
    ("GET", "/fhir/.well-known/smart-configuration", None, OPEN),
    ("GET", "/fhir/Patient", None, PHI),
    ("GET", f"/fhir/Patient?identifier={MRN}", None, PHI),
    ("POST", "/fhir/Patient/_search", None, PHI),
    ("GET", "/fhir/Patient/{pid}", None, PHI),
    ("GET", "/fhir/Patient/{pid}/_history", None, PHI),
    ("GET", "/fhir/DiagnosticReport", None, PHI),
    ("GET", "/fhir/_history", None, PHI),
    ("POST", "/fhir/Patient", PATIENT, PHI),
    ("PUT", "/fhir/Patient/{pid}", PATIENT, PHI),
    ("POST", "/fhir/", BUNDLE, PHI),
    ("GET", "/fhir/AuditEvent", None, AUDIT),
]


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def world(db, settings):
    settings.FHIRAI_REQUIRE_TOKENS = True
    now = timezone.now()
    study = Study.objects.create(
        study_uid="1.2.826.0.1.3680043.8.498.77",
        state="failed",
        state_changed_at=now,
        error="could not be de-identified",
        patient_id=MRN,
        patient_name=NAME,
        patient_birth_date="19610203",
        accession_number="ACC-MX-1",
        modalities="CT",
        instance_count=0,
        first_received_at=now,
        last_received_at=now,
    )
    raw = f"MSH|^~\\&|RIS|HOSP|FHIRAI|HOSP|20240101120000||ADT^A01|MX1|P|2.5.1\rPID|1||{MRN}^^^HOSP||{NAME}\r"
    message = Message.objects.create(
        sender="RIS^HOSP",
        control_id="MX1",
        message_type="ADT^A01",
        version="2.5.1",
        codec="utf-8",
        raw=raw.encode(),
        state="failed",
        received_at=now,
    )
    admin_token = token_issue("matrix-admin", role="admin")[1]
    created = Client().post(
        "/fhir/Patient",
        json.dumps({**PATIENT, "name": [{"family": "Matrixperson", "given": ["Mara"]}]}),
        content_type="application/fhir+json",
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert created.status_code == 201
    return {"study": study, "message": message, "pid": created.json()["id"]}


def token_client(role: str | None) -> tuple[Client, dict[str, str]]:
    if role is None:
        return Client(), {}
    return Client(), {"Authorization": f"Bearer {token_issue(f'matrix-{role}', role=role)[1]}"}


def session_client(role: str | None) -> Client:
    client = Client()
    if role is not None:
        user = User.objects.create_user(f"matrix-{role}", password="pw-for-tests-only")
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        assert client.login(username=user.username, password="pw-for-tests-only")
    return client


def _refused(status: int) -> bool:
    return status in (401, 403)


# --- the tests ------------------------------------------------------------------------------------


def test_every_api_operation_is_in_the_matrix():
    schema = api.get_openapi_schema()
    operations = {f"{m.upper()} {p}" for p, ops in schema["paths"].items() for m in ops}
    assert operations == set(API), f"unclassified: {operations - set(API)}; gone: {set(API) - operations}"


def test_every_console_route_is_in_the_matrix():
    names: set[str] = set()

    def walk(patterns: list) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                if p.namespace == "admin" or str(p.pattern).startswith(
                    ("fhir/", "api/", "dicomweb/", "hl7/")
                ):
                    continue
                walk(p.url_patterns)
            elif isinstance(p, URLPattern) and p.name and not p.name.startswith(("fhir", "hook", "healthz")):
                names.add(p.name)

    walk(get_resolver().url_patterns)
    classified = {name for _, name in UI} | {name for _, name in MACHINE}
    assert names == classified, f"unclassified: {names - classified}"


@pytest.mark.parametrize("role", [*ROLES, None])
def test_machine_routes_answer_every_caller_alike(world, role):
    """No role opens or closes them: the token endpoint wants client credentials (401 invalid_client
    without), discovery is open."""
    from django.urls import reverse

    client, headers = token_client(role)
    wrong = []
    for (method, name), allowed in MACHINE.items():
        assert allowed is OPEN
        path = reverse(name)
        if method == "POST":
            data = "grant_type=client_credentials&scope=system%2F*.rs"
            response = client.post(
                path, data, content_type="application/x-www-form-urlencoded", headers=headers
            )
            ok = response.status_code == 401 and response.json()["error"] == "invalid_client"
        else:
            response = client.get(path, headers=headers)
            ok = response.status_code == 200
        if not ok:
            wrong.append(f"{method} {name} as {role}: {response.status_code}")
    assert not wrong


@pytest.mark.parametrize("role", [*ROLES, None])
def test_api_matrix(world, role):
    client, headers = token_client(role)
    ids = {
        "study_id": MISSING,
        "message_id": MISSING,
        "delivery_id": MISSING,
        "model_id": MISSING,
        "report_id": MISSING,
        "rule_id": MISSING,
        "peer": "MATRIXPEER",
        "name": "matrix-hook",
    }
    wrong = []
    for op, allowed in API.items():
        method, template = op.split(" ", 1)
        path = re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), template)
        body = API_BODIES.get(op)
        kwargs = {"content_type": "application/json", "data": json.dumps(body)} if body is not None else {}
        status = getattr(client, method.lower())(path, headers=headers, **kwargs).status_code
        if allowed is OPEN:
            ok = status < 400 or status == 503  # health may say degraded
        elif role is None:
            ok = status == 401
        elif role in allowed:
            ok = not _refused(status) and status < 500
        else:
            ok = status == 403
        if not ok:
            wrong.append(f"{op} as {role}: {status}")
    assert not wrong


@pytest.mark.parametrize("role", [*ROLES, None])
def test_console_matrix(world, role):
    client = session_client(role)
    from django.urls import reverse

    args = {
        "study": [world["study"].pk],
        "study-preview": [world["study"].pk],
        "message": [world["message"].pk],
        "report": [MISSING],
        "study-retry": [MISSING],
        "study-replay": [MISSING],
        "message-retry": [MISSING],
        "message-replay": [MISSING],
        "report-retry": [MISSING],
        "delivery-retry": [MISSING],
        "model-toggle": [MISSING],
        "model-accepts": [MISSING],
        "profile-activate": [MISSING],
        "subscription-edit": [MISSING],
        "webhook-replay": [MISSING],
    }
    wrong = []
    for (method, name), allowed in UI.items():
        if name == "logout":
            continue  # would end the session the rest of the matrix uses; open by definition
        path = reverse(f"console:{name}", args=args.get(name, []))
        response = getattr(client, method.lower())(path)
        status = response.status_code
        if allowed is OPEN:
            ok = status < 400
        elif role is None:
            ok = status == 302 and "/login/" in response["Location"]
        elif role in allowed:
            ok = status not in (401, 403) and status < 500
        else:
            ok = status == 403
        if not ok:
            wrong.append(f"{method} {name} as {role}: {status}")
    assert not wrong


def oauth_client(role: str) -> tuple[Client, dict[str, str]]:
    """A machine client of this role, registered with its role's ceiling, and its access token."""
    row, secret = client_register(f"matrix-{role}", role=role, with_secret=True)
    client = Client()
    answer = client.post(
        "/auth/token",
        f"grant_type=client_credentials&scope={quote(row.scope)}",
        content_type="application/x-www-form-urlencoded",
        headers={"Authorization": "Basic " + b64encode(f"{row.client_id}:{secret}".encode()).decode()},
    )
    assert answer.status_code == 200, answer.content
    return client, {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.mark.parametrize(
    "role,via", [*((r, "token") for r in [*ROLES, None]), *((r, "oauth") for r in ROLES if r != "viewer")]
)
def test_fhir_matrix(world, role, via):
    """API tokens, and OAuth clients granted their role's whole ceiling, meet the same matrix (a
    viewer client cannot exist: it could be granted no scope)."""
    client, headers = oauth_client(role) if via == "oauth" else token_client(role)
    wrong = []
    for method, template, body, allowed in FHIR:
        path = template.replace("{pid}", world["pid"])
        if method == "PUT":
            body = {**body, "id": world["pid"]}
        kwargs = {"content_type": "application/fhir+json", "data": json.dumps(body)} if body else {}
        if method == "POST" and path.endswith("/_search"):
            kwargs = {"content_type": "application/x-www-form-urlencoded", "data": f"identifier={MRN}"}
        response = getattr(client, method.lower())(path, headers=headers, **kwargs)
        status = response.status_code
        if allowed is OPEN:
            ok = status == 200
        elif role is None:
            ok = status == 401
        elif role in allowed:
            ok = 200 <= status < 300
        else:
            ok = status == 403 and response.json()["resourceType"] == "OperationOutcome"
        if not ok:
            wrong.append(f"{method} {path} as {role}: {status}")
    assert not wrong


@pytest.mark.parametrize("role", ROLES)
def test_identified_data_only_for_the_roles_that_see_it_and_each_view_is_recorded(world, role):
    study, message = world["study"], world["message"]
    client, headers = token_client(role)
    console = session_client(role)
    before = AccessEvent.objects.count()
    views = {
        "api study": client.get(f"/api/studies/{study.pk}", headers=headers).content.decode(),
        "api studies": client.get("/api/studies", headers=headers).content.decode(),
        "api message": client.get(f"/api/messages/{message.pk}", headers=headers).content.decode(),
        "console study": console.get(f"/items/study/{study.pk}/").content.decode(),
        "console worklist": console.get("/items/?kind=study").content.decode(),
        "console message": console.get(f"/items/message/{message.pk}/").content.decode(),
    }
    if role in PHI:
        views["fhir patient"] = client.get(f"/fhir/Patient/{world['pid']}", headers=headers).content.decode()
    shown = {name for name, page in views.items() if "Matrixperson" in page or MRN in page}
    recorded = AccessEvent.objects.filter(pk__gt=0).count() - before
    if role in PHI:
        assert shown == set(views), f"identified data missing from {set(views) - shown}"
        assert recorded >= len(views), f"{recorded} access records for {len(views)} views"
        actors = set(AccessEvent.objects.values_list("actor", flat=True))
        assert f"token:matrix-{role}" in actors and f"user:matrix-{role}" in actors
    else:
        assert not shown, f"identified data shown to {role} in {shown}"
        assert recorded == 0


def test_each_view_of_identified_data_is_an_audit_event_at_fhir_auditevent(world):
    client, headers = token_client("operator")
    assert client.get(f"/api/studies/{world['study'].pk}", headers=headers).status_code == 200
    assert client.get(f"/fhir/Patient?identifier={MRN}", headers=headers).status_code == 200
    auditor, auditor_headers = token_client("auditor")
    found = auditor.get("/fhir/AuditEvent?subtype=read,search-type", headers=auditor_headers).json()
    mine = [
        e["resource"]
        for e in found["entry"]
        if e["resource"]["agent"][0]["who"].get("identifier", {}).get("value") == "token:matrix-operator"
    ]
    actions = {r["subtype"][1]["code"]: r for r in mine}
    assert {"study.view", "fhir.search"} <= set(actions)
    view = actions["study.view"]
    assert view["action"] == "R" and view["subtype"][0]["code"] == "read"
    assert view["entity"][0]["what"]["identifier"]["value"] == str(world["study"].pk)
    assert len(view["entity"][0]["detail"][0]["valueString"]) == 64  # its hash-chain link
    search = actions["fhir.search"]
    assert search["action"] == "E" and search["subtype"][0]["code"] == "search-type"
    assert MRN not in json.dumps(mine)  # the searched value is never in the trail
    one = auditor.get(f"/fhir/AuditEvent/{view['id']}", headers=auditor_headers)
    assert one.status_code == 200 and one.json()["id"] == view["id"]
