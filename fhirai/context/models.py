from __future__ import annotations

from django.db import models


class Patient(models.Model):
    """A patient as the EHR describes it (identified: trusted side only)."""

    mrn_system = models.CharField(max_length=255)
    mrn = models.CharField(max_length=64)
    family = models.CharField(max_length=194, blank=True, default="")
    given = models.CharField(max_length=194, blank=True, default="")
    birth_date = models.CharField(max_length=10, blank=True, default="")
    sex = models.CharField(max_length=16, blank=True, default="")
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="merged"
    )
    resource_id = models.CharField(max_length=64)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["mrn_system", "mrn"], name="patient_mrn")]
        indexes = [models.Index(fields=["mrn"])]

    def __str__(self) -> str:
        return f"patient {self.pk}"

    def surviving(self) -> Patient:
        """The record results go to: this one, or the one it was merged into (ADT^A40)."""
        patient, seen = self, set()
        while patient.merged_into_id and patient.pk not in seen:
            seen.add(patient.pk)
            patient = patient.merged_into  # type: ignore[assignment]
        return patient


class Order(models.Model):
    """An imaging order (FHIR ServiceRequest) keyed by accession number; linked to the study that
    carries the same accession, whichever of the two arrives first."""

    accession = models.CharField(max_length=64, unique=True)
    placer_number = models.CharField(max_length=64, blank=True, default="")
    filler_number = models.CharField(max_length=64, blank=True, default="")
    procedure_code = models.CharField(max_length=64, blank=True, default="")
    procedure_system = models.CharField(max_length=64, blank=True, default="")
    procedure_text = models.CharField(max_length=199, blank=True, default="")
    status = models.CharField(max_length=16, default="active")
    patient = models.ForeignKey(
        Patient, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders"
    )
    resource_id = models.CharField(max_length=64)
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"order {self.pk}"


class ClinicalReport(models.Model):
    """A report from the EHR or RIS, as an ORU^R01 message or a FHIR DiagnosticReport (one row per
    version of it): its text is kept for the NLP stage."""

    message = models.OneToOneField(
        "ingest.Message", null=True, blank=True, on_delete=models.CASCADE, related_name="clinical_report"
    )
    resource = models.ForeignKey(
        "results.FhirResource",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="clinical_reports",
    )
    resource_version = models.PositiveIntegerField(default=0)
    accession = models.CharField(max_length=64, blank=True, default="")
    placer_number = models.CharField(max_length=64, blank=True, default="")
    filler_number = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(max_length=8, blank=True, default="")
    text = models.TextField(blank=True, default="")
    # The message (fhirai.deid.hl7v2) or resource (fhirai.deid.fhir) de-identified, in the `deid`
    # blob area: what the NLP stage reads.
    deid_blob_key = models.CharField(max_length=128, blank=True, default="")
    patient = models.ForeignKey(
        Patient, null=True, blank=True, on_delete=models.SET_NULL, related_name="reports"
    )
    received_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["resource", "resource_version"], name="report_resource_version"),
            models.CheckConstraint(
                condition=models.Q(message__isnull=False) ^ models.Q(resource__isnull=False),
                name="report_from_message_or_resource",
            ),
        ]

    @property
    def source_kind(self) -> str:
        """What carried the report: the message type (ORU^R01), or DiagnosticReport for FHIR."""
        return self.message.message_type if self.message_id else "DiagnosticReport"

    def source_key(self) -> str:
        """What identifies the report at its source: sender and control id, or the resource."""
        if self.message_id:
            return f"message\x1f{self.message.sender}\x1f{self.message.control_id}"
        return f"resource\x1fDiagnosticReport/{self.resource.rid}\x1f{self.resource_version}"

    def source_text(self) -> str:
        if self.message_id:
            m = self.message
            return f"{m.message_type} report {m.control_id} from {m.sender}"
        return f"FHIR DiagnosticReport/{self.resource.rid} version {self.resource_version}"

    def timeline(self) -> tuple[str, int]:
        """Whose timeline its events go on: the message's, or the report's own for FHIR."""
        return ("message", self.message_id) if self.message_id else ("report", self.pk)


class OptOut(models.Model):
    """A patient's objection to AI processing, from one source: the site's own list (console/API),
    an HL7 v2 ADT's PD1-12 Protection Indicator, or a FHIR Consent. While any source's row is active,
    that patient's studies and reports are routed to no model (skipped: opt-out, on their timelines),
    so nothing of theirs is inferred or exported. Identified (the MRN): trusted side only."""

    mrn_system = models.CharField(max_length=255)
    mrn = models.CharField(max_length=64)
    source = models.CharField(max_length=16)  # site, hl7, fhir
    active = models.BooleanField(default=True)
    reference = models.CharField(max_length=128, blank=True, default="")  # what said so (message, resource)
    note = models.CharField(max_length=200, blank=True, default="")
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["mrn_system", "mrn", "source"], name="optout_source")]
        indexes = [models.Index(fields=["mrn", "active"])]

    def __str__(self) -> str:
        return f"opt-out {self.pk} ({self.source})"
