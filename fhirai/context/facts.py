"""What an inbound message says, in the domain's terms: the adapter that reads HL7 v2 and the FHIR
ingest fill these; the domain acts on them without knowing the wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class PatientFacts:
    mrn: str
    mrn_authority: str = ""
    family: str = ""
    given: str = ""
    birth_date: str = ""  # YYYY-MM-DD, or YYYY-MM / YYYY
    sex: str = ""  # HL7 table 0001 code
    mrn_system: str = ""  # the identifier system, when the source names one (FHIR)
    resource_id: str = ""  # the FHIR id the source gave this patient (FHIR)
    # Whether the patient objects to their data being processed: "Y" (opted out), "N" (not, or no
    # longer), "" (the source does not say). HL7 v2 PD1-12 Protection Indicator.
    protection: str = ""


@dataclass
class OrderFacts:
    accession: str
    placer_number: str = ""
    filler_number: str = ""
    procedure_code: str = ""
    procedure_system: str = ""
    procedure_text: str = ""
    control: str = ""  # ORC-1 (NW, CA, SC, XO ...)
    status: str = ""  # ORC-5
    fhir_status: str = ""  # ServiceRequest.status, when the source is FHIR
    resource_id: str = ""  # the FHIR id the source gave this order (FHIR)


@dataclass
class ReportFacts:
    accession: str = ""
    placer_number: str = ""
    filler_number: str = ""
    status: str = ""  # OBR-25
    text: str = ""


@dataclass
class MessageFacts:
    """One message's meaning: `kind` is patient, merge, order or report."""

    kind: str
    patient: PatientFacts | None = None
    prior_patients: list[PatientFacts] = field(default_factory=list)
    order: OrderFacts | None = None
    report: ReportFacts | None = None


class MessageReader(Protocol):
    def __call__(self, raw: bytes, *, codec: str, message_type: str) -> MessageFacts:
        """Read a committed message; raises ValueError with a PHI-free reason if it cannot."""
