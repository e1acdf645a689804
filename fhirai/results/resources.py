"""Helpers every builder of FHIR resources in fhirai shares: identifier systems, deterministic
ids, validation against the fhir.resources R4B models (R4 and R4B agree on every element fhirai
emits: DiagnosticReport, Observation, Device, Provenance, ImagingStudy, Patient, ServiceRequest,
Task)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

_NS = uuid.UUID("6f3f8a52-35c4-4f4b-9a0c-1b8e2f1c9d77")  # fhirai's namespace for deterministic ids
VALIDATORS = {
    "Consent": Consent,
    "DiagnosticReport": DiagnosticReport,
    "Observation": Observation,
    "Device": Device,
    "Provenance": Provenance,
    "ImagingStudy": ImagingStudy,
    "Patient": Patient,
    "ServiceRequest": ServiceRequest,
    "Task": Task,
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


def references_rewrite(node: Any, rewrite: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """A copy of `node` (a resource or part of one) in which every Reference, i.e. every object with
    a string `reference`, has been passed through `rewrite`."""
    if isinstance(node, list):
        return [references_rewrite(n, rewrite) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: references_rewrite(v, rewrite) for k, v in node.items()}
    return rewrite(out) if isinstance(out.get("reference"), str) else out
