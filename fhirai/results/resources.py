"""Helpers every builder of FHIR resources in fhirai shares: identifier systems, deterministic
ids, validation against the fhir.resources R4B models (R4 and R4B agree on every element fhirai
emits: DiagnosticReport, Observation, Device, Provenance, ImagingStudy, Patient, ServiceRequest)."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.servicerequest import ServiceRequest

_NS = uuid.UUID("6f3f8a52-35c4-4f4b-9a0c-1b8e2f1c9d77")  # fhirai's namespace for deterministic ids
VALIDATORS = {
    "DiagnosticReport": DiagnosticReport,
    "Observation": Observation,
    "Device": Device,
    "Provenance": Provenance,
    "ImagingStudy": ImagingStudy,
    "Patient": Patient,
    "ServiceRequest": ServiceRequest,
}


def system(kind: str) -> str:
    """The identifier system fhirai uses for its own `kind` of identifier at this site."""
    return f"{settings.FHIRAI_IDENTIFIER_SYSTEM}:{kind}"


def stable_id(*parts: str) -> str:
    """A deterministic resource id (UUIDv5), so a rebuilt resource keeps its id and retries are idempotent."""
    return str(uuid.uuid5(_NS, "\x1f".join(parts)))


def validated(content: dict[str, Any]) -> dict[str, Any]:
    """Check `content` against the FHIR model of its type; raises ValueError when it does not conform."""
    VALIDATORS[content["resourceType"]].model_validate(content)
    return content
