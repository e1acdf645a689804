from __future__ import annotations

from django.db import models


class FhirResource(models.Model):
    """A FHIR R4 resource fhirai owns, stored as validated JSON, versioned."""

    resource_type = models.CharField(max_length=64)
    rid = models.CharField(max_length=64)
    version_id = models.PositiveIntegerField(default=1)
    last_updated = models.DateTimeField()
    content = models.JSONField()
    study = models.ForeignKey(
        "ingest.Study", null=True, blank=True, on_delete=models.SET_NULL, related_name="resources"
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["resource_type", "rid"], name="fhir_type_id")]
        indexes = [models.Index(fields=["resource_type", "last_updated"])]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.rid}"


class FhirToken(models.Model):
    """A search index row: one (parameter, system, value) of one resource."""

    resource = models.ForeignKey(FhirResource, on_delete=models.CASCADE, related_name="tokens")
    param = models.CharField(max_length=64)
    system = models.CharField(max_length=255, blank=True, default="")
    value = models.CharField(max_length=255)

    class Meta:
        indexes = [models.Index(fields=["param", "value"])]


class FhirVersion(models.Model):
    """Every version a resource has had (vread, _history): the current one is also in FhirResource."""

    resource = models.ForeignKey(FhirResource, on_delete=models.CASCADE, related_name="versions")
    version_id = models.PositiveIntegerField()
    last_updated = models.DateTimeField()
    method = models.CharField(max_length=8, default="PUT")
    content = models.JSONField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["resource", "version_id"], name="fhir_version_once")]
        indexes = [models.Index(fields=["last_updated"])]


class FhirDate(models.Model):
    """A date search index row: the instant range [low, high) one date element of a resource covers."""

    resource = models.ForeignKey(FhirResource, on_delete=models.CASCADE, related_name="dates")
    param = models.CharField(max_length=64)
    low = models.DateTimeField()
    high = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["param", "low"]), models.Index(fields=["param", "high"])]


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"
    # Not sent: the patient opted out of AI processing after the report was made (final; the
    # report stays here, readable in the console and facade by the roles that may).
    WITHHELD = "withheld"


class Delivery(models.Model):
    """One report's hand-off to one destination (an outbox row): attempts, backoff, the peer's answer."""

    report = models.ForeignKey(FhirResource, on_delete=models.CASCADE, related_name="deliveries")
    # What the report is about: a study (image models) or a clinical report (NLP models).
    study = models.ForeignKey(
        "ingest.Study", null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    clinical_report = models.ForeignKey(
        "context.ClinicalReport", null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    destination = models.CharField(max_length=64)
    report_version = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_status = models.IntegerField(null=True, blank=True)
    last_response = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["report", "destination", "report_version"], name="delivery_once")
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]
        verbose_name_plural = "deliveries"


class DeliveryAttempt(models.Model):
    """One try of a delivery: when, how long, what the peer answered (the full reply may echo
    patient data: the console shows it to identified roles only)."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    at = models.DateTimeField()
    seconds = models.FloatField()
    outcome = models.CharField(max_length=16)  # delivered, refused, unreachable
    status = models.IntegerField(null=True, blank=True)
    summary = models.CharField(max_length=300, blank=True, default="")
    response = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["delivery", "number"]
        indexes = [models.Index(fields=["delivery", "number"])]


class Destination(models.Model):
    """A write-back destination as set in the console. The settings (FHIRAI_FHIR_UPSTREAM_URL,
    FHIRAI_HL7_PEERS) give the defaults; a row of the same name overrides the address or switches
    the destination off, a row with a new mllp: name adds an HL7 peer. Credentials stay in the
    settings (the environment), never here."""

    name = models.CharField(max_length=64, unique=True)  # "fhir-upstream" or "mllp:NAME"
    address = models.CharField(max_length=2000)  # the FHIR base URL, or HOST:PORT for MLLP
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField()
    updated_by = models.CharField(max_length=160)

    def __str__(self) -> str:
        return self.name


class CommitmentState(models.TextChoices):
    REQUESTED = "requested"  # N-ACTION sent (or about to be): the PACS's N-EVENT-REPORT is awaited
    COMMITTED = "committed"  # the PACS took responsibility for every object
    FAILED = "failed"  # the PACS named objects it does not commit: the delivery failed visibly
    REFUSED = "refused"  # the PACS did not accept the request (no such service, an error status)
    EXPIRED = "expired"  # no report within FHIRAI_PACS_COMMITMENT_TIMEOUT


class Commitment(models.Model):
    """Storage Commitment (PS3.4 Annex J, Push Model; IHE RAD-10) of the objects one PACS delivery
    sent: the transaction, what it covers, and the PACS's answer."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="commitments")
    transaction_uid = models.CharField(max_length=64, unique=True)
    state = models.CharField(
        max_length=16, choices=CommitmentState.choices, default=CommitmentState.REQUESTED
    )
    references = models.JSONField(default=list)  # [[SOP class UID, SOP instance UID], ...]
    failed = models.JSONField(default=list)  # [[SOP instance UID, failure reason], ...]
    detail = models.TextField(blank=True, default="")
    requested_at = models.DateTimeField()
    answered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "requested_at"])]

    def __str__(self) -> str:
        return f"commitment {self.transaction_uid} ({self.state})"
