"""The few domain exceptions that adapters translate into their protocol's terms
(DICOM status, HL7 ACK codes, FHIR OperationOutcome)."""

from __future__ import annotations


class FhiraiError(Exception):
    """Base of fhirai's domain errors."""


class InvalidInput(FhiraiError):
    """The input can never be processed as sent. `code` is a stable machine code that the
    adapters map to their protocol (e.g. DICOM 0xC000 family, HL7 AR, FHIR 400)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class Unavailable(FhiraiError):
    """A transient failure (database, blob store, upstream down): retry later; DICOM answers
    out of resources, HL7 AE, HTTP 503."""


class NotFound(FhiraiError):
    """The thing asked for does not exist."""


class Forbidden(FhiraiError):
    """The caller may not do this (its role or its OAuth scopes do not allow it): HTTP 403."""
