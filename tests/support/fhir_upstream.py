"""A small FHIR R4 server for the write-back tests, on a real socket.

Why not a real one: the FHIR servers a hospital runs (HAPI FHIR, Medplum, Smile) need downloads
from outside the package registries this machine reaches. This one implements exactly what
fhirai's writer relies on, by the R4 spec: POST of a transaction Bundle at the base, processed
atomically, with conditional updates (`PUT Type?identifier=system|value`, R4 3.1.0.4.3) and
`ifNoneExist` conditional creates on `identifier=system|value` and `_tag=system|code` (R4 3.1.0.8.1), urn:uuid fullUrls resolved in references, and a
transaction-response Bundle; plus GET search by identifier. It can be told to fail (503), to hang
(apply a transaction only after the client has timed out), or to refuse (422) so retries and visible failures can be tested, to answer 401 to given bearer tokens
(revoked), and to publish a SMART configuration (`/.well-known/smart-configuration`, 404 when
none) for SMART Backend Services discovery."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from tests.support.json_http import JsonHandler


class UpstreamState:
    def __init__(self) -> None:
        self.resources: dict[str, dict[str, dict[str, Any]]] = {}
        self.fail_with: int | None = None
        # Hang: hold each POST this long before handling it as usual, so the client has given up
        # (timed out) by the time its transaction is applied, and its retry arrives as well.
        self.hang_seconds = 0.0
        self.requests = 0
        self.writes = 0  # resources created or updated
        self.auth_headers: list[str] = []
        self.revoked: set[str] = set()  # bearer tokens answered 401
        self.smart_configuration: dict[str, Any] | None = None
        self.discoveries = 0  # GETs of the SMART configuration
        self.lock = threading.Lock()

    def all(self, rtype: str) -> list[dict[str, Any]]:
        return list(self.resources.get(rtype, {}).values())

    def find(self, rtype: str, criterion: str) -> list[dict[str, Any]]:
        name, _, raw = criterion.partition("=")
        system, _, value = raw.rpartition("|")
        out = []
        for res in self.all(rtype):
            if name == "identifier":
                hits = [
                    i
                    for i in res.get("identifier", [])
                    if i.get("value") == value and (not system or i.get("system") == system)
                ]
            elif name == "_tag":
                hits = [
                    t
                    for t in res.get("meta", {}).get("tag", [])
                    if t.get("code") == value and (not system or t.get("system") == system)
                ]
            else:
                raise ValueError(f"unsupported ifNoneExist {name}")
            if hits:
                out.append(res)
        return out


def _resolve(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, ids) for n in node]
    if isinstance(node, dict):
        out = {k: _resolve(v, ids) for k, v in node.items()}
        if isinstance(out.get("reference"), str) and out["reference"] in ids:
            out["reference"] = ids[out["reference"]]
        return out
    return node


def _handler(state: UpstreamState) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def _revoked(self) -> bool:
            """Answer 401 when the request's bearer token was revoked (state.lock held)."""
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in state.revoked:
                return False
            issue = {"severity": "error", "code": "login", "diagnostics": "token revoked"}
            self._send(401, {"resourceType": "OperationOutcome", "issue": [issue]})
            return True

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", 0))
            bundle = json.loads(self.rfile.read(length))
            if state.hang_seconds:
                time.sleep(state.hang_seconds)
            with state.lock:
                state.requests += 1
                state.auth_headers.append(self.headers.get("Authorization", ""))
                if self._revoked():
                    return
                if state.fail_with:
                    self._send(
                        state.fail_with,
                        {
                            "resourceType": "OperationOutcome",
                            "issue": [
                                {
                                    "severity": "error",
                                    "code": "transient" if state.fail_with >= 500 else "invalid",
                                    "diagnostics": "told to fail",
                                }
                            ],
                        },
                    )
                    return
                if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
                    self._send(
                        400,
                        {
                            "resourceType": "OperationOutcome",
                            "issue": [
                                {
                                    "severity": "error",
                                    "code": "invalid",
                                    "diagnostics": "expected a transaction",
                                }
                            ],
                        },
                    )
                    return
                ids, responses, staged = {}, [], []
                for entry in bundle["entry"]:
                    req, res = entry["request"], entry["resource"]
                    rtype = res["resourceType"]
                    if req["method"] == "PUT" and "?" in req["url"]:  # conditional update (R4 3.1.0.4.3)
                        existing = state.find(rtype, unquote(req["url"].split("?", 1)[1]))
                        if len(existing) > 1:
                            self._send(412, {"resourceType": "OperationOutcome", "issue": []})
                            return
                        rid = existing[0]["id"] if existing else uuid.uuid4().hex
                        version = (
                            int(existing[0].get("meta", {}).get("versionId", "1")) + 1 if existing else 1
                        )
                        status = "200 OK" if existing else "201 Created"
                        staged.append(
                            (rtype, rid, {**res, "meta": {**res.get("meta", {}), "versionId": str(version)}})
                        )
                    else:
                        existing = state.find(rtype, req["ifNoneExist"]) if req.get("ifNoneExist") else []
                        version = 1
                        if existing:
                            rid, status = existing[0]["id"], "200 OK"
                        else:
                            rid, status = uuid.uuid4().hex, "201 Created"
                            staged.append((rtype, rid, res))
                    ids[entry["fullUrl"]] = f"{rtype}/{rid}"
                    responses.append(
                        {"response": {"status": status, "location": f"{rtype}/{rid}/_history/{version}"}}
                    )
                for rtype, rid, res in staged:  # commit all at once: transactions are atomic
                    state.resources.setdefault(rtype, {})[rid] = {**_resolve(res, ids), "id": rid}
                    state.writes += 1
            self._send(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": responses})

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            if url.path.endswith("/.well-known/smart-configuration"):
                with state.lock:
                    state.discoveries += 1
                    found_config = state.smart_configuration
                if found_config is None:
                    self._send(404, {"resourceType": "OperationOutcome", "issue": []})
                else:
                    self._send(200, found_config)
                return
            rtype = url.path.rstrip("/").rsplit("/", 1)[-1]
            query = parse_qs(url.query)
            with state.lock:
                if self._revoked():
                    return
                found = (
                    state.find(rtype, f"identifier={query['identifier'][0]}")
                    if "identifier" in query
                    else state.all(rtype)
                )
            self._send(
                200,
                {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "total": len(found),
                    "entry": [{"resource": r} for r in found],
                },
            )

    return Handler


class FhirUpstream:
    """Start with `with FhirUpstream() as up:`; `up.url` is its base, `up.state` what it holds."""

    def __init__(self) -> None:
        self.state = UpstreamState()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def __enter__(self) -> FhirUpstream:
        # a short poll: shutdown() waits up to one poll interval, at every test's teardown
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
