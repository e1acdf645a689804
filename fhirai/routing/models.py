from __future__ import annotations

from django.db import models


class ModelRecord(models.Model):
    """A registered model: what it is (name, version), which studies or messages it accepts, what
    its outputs mean (codes, units, thresholds), and whether this site has it enabled. Registered
    from a model package (fhirai.routing.registry); a version is immutable once registered, the
    site's routing choices (accepts, enabled) stay editable. The runtime that loads and runs it
    lives in workers/; this row is the domain's view of it."""

    name = models.CharField(max_length=64)
    version = models.CharField(max_length=32)
    title = models.CharField(max_length=128)
    task = models.CharField(max_length=64)
    # Routing: modalities, body_parts, sop_classes (studies) and message_types (reports); the
    # manifest's values at registration, a site may narrow or widen them.
    accepts = models.JSONField(default=dict)
    outputs = models.JSONField(default=dict)
    report_code = models.JSONField(default=dict)
    enabled = models.BooleanField(default=True)
    format = models.CharField(max_length=16, default="builtin")
    sha256 = models.CharField(max_length=64, blank=True, default="")
    manifest = models.JSONField(default=dict, blank=True)
    registered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="model_name_version")]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


class JobState(models.TextChoices):
    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class InferenceJob(models.Model):
    """One model run on one revision of one study, or on one clinical report (NLP models)."""

    study = models.ForeignKey(
        "ingest.Study", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    clinical_report = models.ForeignKey(
        "context.ClinicalReport", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    model = models.ForeignKey(ModelRecord, on_delete=models.PROTECT, related_name="jobs")
    revision = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED)
    inputs = models.JSONField(default=list)
    attempts = models.PositiveIntegerField(default=0)
    dispatched_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "model", "revision"], name="job_study_model_revision"),
            models.UniqueConstraint(fields=["clinical_report", "model"], name="job_report_model"),
            models.CheckConstraint(
                condition=models.Q(study__isnull=False) ^ models.Q(clinical_report__isnull=False),
                name="job_reads_study_or_report",
            ),
        ]
        indexes = [models.Index(fields=["state", "dispatched_at"])]

    sr_blob_key = models.CharField(max_length=128, blank=True, default="")  # DICOM SR output, when built
    key_image_blob_key = models.CharField(max_length=128, blank=True, default="")  # Secondary Capture

    def __str__(self) -> str:
        on = f"study {self.study_id}" if self.study_id else f"report {self.clinical_report_id}"
        return f"job {self.pk} ({self.model_id} on {on})"
