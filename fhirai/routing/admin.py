from __future__ import annotations

from django.contrib import admin

from fhirai.routing.models import InferenceJob, ModelRecord


@admin.register(ModelRecord)
class ModelRecordAdmin(admin.ModelAdmin):
    """A registered version is immutable (its weights and what they mean); the site decides whether
    it runs and what it is routed."""

    list_display = ("name", "version", "title", "task", "format", "enabled", "registered_at")
    list_editable = ("enabled",)
    list_filter = ("task", "format", "enabled")
    readonly_fields = ("name", "version", "title", "task", "format", "sha256", "outputs", "manifest")
    fields = (
        "name",
        "version",
        "title",
        "task",
        "format",
        "sha256",
        "enabled",
        "accepts",
        "report_code",
        "outputs",
        "manifest",
    )

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False  # models come in as packages: python manage.py model_register


@admin.register(InferenceJob)
class InferenceJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "study_id",
        "clinical_report_id",
        "model",
        "revision",
        "state",
        "attempts",
        "dispatched_at",
        "finished_at",
    )
    list_filter = ("state", "model")
    readonly_fields = [f.name for f in InferenceJob._meta.fields]
