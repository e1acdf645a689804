"""Property-based checks of the API against its own OpenAPI schema (schemathesis, through the WSGI
app in-process): generated requests with an admin token find no 5xx and no response that breaks
the schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection

from fhirai.api.tokens import token_issue
from fhirai.wsgi import application

schema = schemathesis.openapi.from_wsgi("/api/schema", application)


@pytest.fixture
def admin_token(db) -> Iterator[str]:  # noqa: ANN001 - pytest-django's db fixture
    # Like Django's test Client: a WSGI request must not close the connection that holds the
    # test's transaction (request_finished -> close_old_connections).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield token_issue("schemathesis", role="admin")[1]
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, admin_token):  # noqa: ANN001
    # negative_data_rejection is left out: like Django, the API takes the last of a repeated query
    # parameter (?state=a&state=b) where the schema says one string, which that check counts as a
    # schema-violating request accepted; every other check (5xx, response schema, status codes,
    # content types, auth) runs.
    case.call_and_validate(
        headers={"Authorization": f"Bearer {admin_token}"}, excluded_checks=[negative_data_rejection]
    )
