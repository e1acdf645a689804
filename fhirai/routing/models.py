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
    WAITING = "waiting"  # for its prior study (PriorFetch), not yet dispatched
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

    # De-identified instances of the prior study the model compares with (manifest "priors").
    prior_inputs = models.JSONField(default=list, blank=True)
    sr_blob_key = models.CharField(max_length=128, blank=True, default="")  # DICOM SR output, when built
    key_image_blob_key = models.CharField(max_length=128, blank=True, default="")  # Secondary Capture

    def __str__(self) -> str:
        on = f"study {self.study_id}" if self.study_id else f"report {self.clinical_report_id}"
        return f"job {self.pk} ({self.model_id} on {on})"


class PriorState(models.TextChoices):
    SEARCHING = "searching"  # looking in fhirai's own studies, then C-FIND at the PACS
    MOVING = "moving"  # C-MOVE asked; the PACS sends the study to FHIRAI_PRIORS_AE
    RECEIVED = "received"  # the prior study is being de-identified
    READY = "ready"  # the job has its prior inputs
    NONE = "none"  # no comparable prior (or none in time): the job ran without one
    FAILED = "failed"  # the manifest requires a prior and none could be had: the job failed


class PriorFetch(models.Model):
    """The search for one job's prior study: where it stands, which study was chosen (its UID is
    identified data and stays on the trusted side with the study rows), and why it ended as it did.
    C-STOREs to the priors AE title are accepted only for a study a fetch is moving."""

    job = models.OneToOneField(InferenceJob, on_delete=models.CASCADE, related_name="prior_fetch")
    state = models.CharField(max_length=16, choices=PriorState.choices, default=PriorState.SEARCHING)
    source = models.CharField(max_length=16, blank=True, default="")  # "fhirai" or "pacs"
    study_uid = models.CharField(max_length=64, blank=True, default="")
    prior_study = models.ForeignKey(
        "ingest.Study", null=True, blank=True, on_delete=models.SET_NULL, related_name="prior_fetches"
    )
    moved = models.PositiveIntegerField(default=0)  # instances the PACS reported sent
    # Days from the prior's study date to the study's, from the identified dates on this side: the
    # model gets the number, never a date (de-identified headers carry none without a date option).
    interval_days = models.IntegerField(null=True, blank=True)
    detail = models.TextField(blank=True, default="")
    started_at = models.DateTimeField()
    dispatched_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "study_uid"]), models.Index(fields=["state", "started_at"])]

    def __str__(self) -> str:
        return f"prior fetch for job {self.job_id} ({self.state})"
