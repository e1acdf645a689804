from __future__ import annotations

from django.contrib import admin

from fhirai.routing.models import InferenceJob, ModelRecord


@admin.register(ModelRecord)
class ModelRecordAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "title", "task", "enabled")
    list_editable = ("enabled",)


@admin.register(InferenceJob)
class InferenceJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "study_id",
        "model",
        "revision",
        "state",
        "attempts",
        "dispatched_at",
        "finished_at",
    )
    list_filter = ("state", "model")
    readonly_fields = [f.name for f in InferenceJob._meta.fields]
