from __future__ import annotations

from django.db import models


class ModelRecord(models.Model):
    """A registered model: what it is (name, version), which studies it accepts, what its outputs
    mean (codes and units), and whether this site has it enabled. The runtime that loads and runs
    it lives in workers/; this row is the domain's view of it."""

    name = models.CharField(max_length=64)
    version = models.CharField(max_length=32)
    title = models.CharField(max_length=128)
    task = models.CharField(max_length=64)
    accepts = models.JSONField(default=dict)
    outputs = models.JSONField(default=dict)
    report_code = models.JSONField(default=dict)
    enabled = models.BooleanField(default=True)

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
    """One model run on one revision of one study."""

    study = models.ForeignKey("ingest.Study", on_delete=models.CASCADE, related_name="jobs")
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
            models.UniqueConstraint(fields=["study", "model", "revision"], name="job_study_model_revision")
        ]
        indexes = [models.Index(fields=["state", "dispatched_at"])]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.model_id} on study {self.study_id})"
