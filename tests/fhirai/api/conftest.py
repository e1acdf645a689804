from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from fhirai.api.tokens import token_issue
from fhirai.ingest.models import Message, Study


class ApiClient:
    """The Django test client with a Bearer token on every request."""

    def __init__(self, token: str | None) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(path, params, headers=self.headers)

    def post(self, path: str) -> Any:
        return self.client.post(path, headers=self.headers)

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.client.patch(path, body, content_type="application/json", headers=self.headers)


@pytest.fixture
def as_role(db) -> Callable[[str], ApiClient]:  # noqa: ANN001 - pytest-django's db fixture
    def make(role: str) -> ApiClient:
        _, token = token_issue(f"{role}-client", role=role)
        return ApiClient(token)

    return make


@pytest.fixture
def study(db) -> Study:  # noqa: ANN001
    now = timezone.now()
    return Study.objects.create(
        study_uid="1.2.826.0.1.3680043.8.498.1",
        state="failed",
        state_changed_at=now,
        error="instance 1 could not be de-identified: ValueError",
        patient_id="MRN-7734921",
        patient_name="Testperson^Alma^Q",
        patient_birth_date="19610203",
        accession_number="ACC-55501",
        modalities="CT",
        calling_ae="TESTSCU",
        instance_count=1,
        first_received_at=now,
        last_received_at=now,
    )


@pytest.fixture
def message(db) -> Message:  # noqa: ANN001
    raw = "MSH|^~\\&|RIS|HOSP|FHIRAI|HOSP|20240101120000||ADT^A01|C123|P|2.5.1\rPID|1||MRN-7734921^^^HOSP||Testperson^Alma\r"
    return Message.objects.create(
        sender="RIS^HOSP",
        control_id="C123",
        message_type="ADT^A01",
        version="2.5.1",
        codec="utf-8",
        raw=raw.encode(),
        state="processed",
        received_at=timezone.now(),
    )
