from __future__ import annotations

from django.db import models


class StudyState(models.TextChoices):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    DEIDENTIFIED = "deidentified"
    QUEUED = "queued"
    REPORTED = "reported"
    WRITTEN_BACK = "written_back"
    NO_MODEL = "no_model"
    FAILED = "failed"


class Study(models.Model):
    """A DICOM study as received (identified: this row stays on the trusted side)."""

    study_uid = models.CharField(max_length=64, unique=True)
    state = models.CharField(max_length=16, choices=StudyState.choices, default=StudyState.RECEIVING)
    state_changed_at = models.DateTimeField()
    revision = models.PositiveIntegerField(default=1)
    error = models.TextField(blank=True, default="")
    # Header facts from the first instance, for linking, routing and write-back.
    patient_id = models.CharField(max_length=64, blank=True, default="")
    issuer_of_patient_id = models.CharField(max_length=64, blank=True, default="")
    patient_name = models.CharField(max_length=324, blank=True, default="")
    patient_birth_date = models.CharField(max_length=8, blank=True, default="")
    patient_sex = models.CharField(max_length=16, blank=True, default="")
    accession_number = models.CharField(max_length=16, blank=True, default="")
    study_date = models.CharField(max_length=8, blank=True, default="")
    study_time = models.CharField(max_length=16, blank=True, default="")
    study_description = models.CharField(max_length=64, blank=True, default="")
    body_part = models.CharField(max_length=16, blank=True, default="")
    modalities = models.CharField(max_length=64, blank=True, default="")
    calling_ae = models.CharField(max_length=16, blank=True, default="")
    # "clinical" (sent to fhirai to be read) or "prior" (fetched from the PACS for comparison:
    # de-identified like any study, never routed to a model on its own, never reported).
    role = models.CharField(max_length=8, default="clinical", db_default="clinical")
    # No pseudonyms here: the vault is the only place that maps them to these identifiers.
    instance_count = models.PositiveIntegerField(default=0)
    first_received_at = models.DateTimeField()
    last_received_at = models.DateTimeField()
    # Retention (fhirai.ops.retention): when the instances as received (with the SR and key image
    # built from them) and when the de-identified copies were removed; null while kept.
    raw_purged_at = models.DateTimeField(null=True, blank=True)
    deid_purged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["state", "last_received_at"]),
            models.Index(fields=["state", "state_changed_at"]),
            models.Index(fields=["patient_id"]),
            models.Index(fields=["accession_number"]),
            # The worklist (newest first) and the dashboard's window.
            models.Index(fields=["first_received_at"]),
            # Retention's candidates: only rows whose data is still kept, so its pass stays an
            # empty index scan however many purged studies pile up behind it.
            models.Index(
                fields=["state_changed_at"],
                condition=models.Q(raw_purged_at__isnull=True),
                name="study_raw_kept",
            ),
            models.Index(
                fields=["state_changed_at"],
                condition=models.Q(deid_purged_at__isnull=True),
                name="study_deid_kept",
            ),
        ]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return f"study {self.pk}"


class Instance(models.Model):
    """One received SOP instance; its bytes are in the blob store exactly as received."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    sop_class_uid = models.CharField(max_length=64)
    series_uid = models.CharField(max_length=64)
    modality = models.CharField(max_length=16, blank=True, default="")
    # InstanceNumber from the header, for ordering a series (the console's preview) without a read.
    instance_number = models.IntegerField(null=True, blank=True)
    # For series selection without reading the file: ImageType values (\\-joined), the plane
    # the image lies in (axial, coronal, sagittal, oblique; "" when it has no orientation) and
    # the series description.
    image_type = models.CharField(max_length=128, blank=True, default="", db_default="")
    plane = models.CharField(max_length=8, blank=True, default="", db_default="")
    series_description = models.CharField(max_length=64, blank=True, default="", db_default="")
    transfer_syntax_uid = models.CharField(max_length=64)
    blob_key = models.CharField(max_length=128)
    size = models.PositiveBigIntegerField()
    revision = models.PositiveIntegerField(default=1)
    received_at = models.DateTimeField()
    calling_ae = models.CharField(max_length=16, blank=True, default="")
    deid_blob_key = models.CharField(max_length=128, blank=True, default="")

    def __str__(self) -> str:
        return f"instance {self.pk} of study {self.study_id}"


class Rejection(models.Model):
    """Input refused at the door, kept for inspection and replay (DESIGN invariant 4)."""

    protocol = models.CharField(max_length=16)
    peer = models.CharField(max_length=128, blank=True, default="")
    blob_key = models.CharField(max_length=128, blank=True, default="")
    code = models.CharField(max_length=64)
    detail = models.TextField()
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["-received_at"]
        indexes = [
            # Retention's candidates: rejections whose bytes are still kept (see Study).
            models.Index(fields=["received_at"], condition=~models.Q(blob_key=""), name="rejection_kept"),
        ]


class MessageState(models.TextChoices):
    RECEIVED = "received"
    PROCESSED = "processed"
    FAILED = "failed"


class Message(models.Model):
    """One HL7 v2 message as received: raw bytes in the row (small, committed before the ACK).
    Its identity is the sender (MSH-3^MSH-4) with the control ID (MSH-10): a resend is refused
    by the unique constraint and acknowledged again (invariant 2)."""

    sender = models.CharField(max_length=200)
    control_id = models.CharField(max_length=199)
    message_type = models.CharField(max_length=16)
    version = models.CharField(max_length=8)
    codec = models.CharField(max_length=16)
    raw = models.BinaryField()
    peer = models.CharField(max_length=128, blank=True, default="")
    enhanced = models.BooleanField(default=False)
    state = models.CharField(max_length=16, choices=MessageState.choices, default=MessageState.RECEIVED)
    # Enhanced mode: MSH-16 and the application acknowledgment owed to the sender (an outbox of one).
    # (Database defaults: the receive path inserts rows with one raw multi-row INSERT.)
    app_ack = models.CharField(max_length=2, blank=True, default="", db_default="")
    app_ack_state = models.CharField(max_length=8, blank=True, default="", db_default="")
    app_ack_code = models.CharField(max_length=2, blank=True, default="", db_default="")
    app_ack_error = models.TextField(blank=True, default="", db_default="")
    app_ack_attempts = models.PositiveIntegerField(default=0, db_default=0)
    app_ack_next_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    received_at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)
    raw_purged_at = models.DateTimeField(null=True, blank=True)  # retention: `raw` emptied then

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["sender", "control_id"], name="message_sender_control_id")
        ]
        indexes = [
            models.Index(fields=["state", "received_at"]),
            # The worklist (newest first) and the dashboard's window and completions per hour.
            models.Index(fields=["received_at"]),
            models.Index(fields=["state", "processed_at"]),
            # Retention's candidates (see Study): messages whose bytes are still kept.
            models.Index(
                fields=["received_at"],
                condition=models.Q(raw_purged_at__isnull=True),
                name="message_raw_kept",
            ),
        ]

    def __str__(self) -> str:
        return f"message {self.pk} ({self.message_type})"


class SourceRule(models.Model):
    """A sender allowed in, as set in the console, beside the settings' lists (FHIRAI_DICOM_ALLOW,
    FHIRAI_MLLP_ALLOW): a DICOM calling AE title (`AE`, or `AE@network` to pin it to where it may
    come from), or a network MLLP connections may come from.
    While a kind has no entry anywhere, every sender of that kind is let in."""

    kind = models.CharField(max_length=16)  # "dicom-ae" or "mllp-network"
    value = models.CharField(max_length=64)
    note = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField()
    created_by = models.CharField(max_length=160)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "value"], name="source_rule_once")]
        ordering = ["kind", "value"]

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"
