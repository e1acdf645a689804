from __future__ import annotations

from django.contrib import admin

from fhirai.audit.timeline import events_for
from fhirai.ingest.messages import message_events
from fhirai.ingest.models import Instance, Message, Rejection, Study
from fhirai.ui.timeline import timeline_html


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "state",
        "instance_count",
        "modalities",
        "calling_ae",
        "last_received_at",
        "state_changed_at",
    )
    list_filter = ("state", "modalities", "calling_ae")
    search_fields = ("=patient_id", "=accession_number")
    readonly_fields = [f.name for f in Study._meta.fields] + ["timeline"]

    @admin.display(description="timeline")
    def timeline(self, study: Study) -> str:
        return timeline_html((e.event, e.at, e.detail, e.error) for e in events_for("study", study.pk))


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    list_display = ("id", "study_id", "modality", "transfer_syntax_uid", "size", "received_at")
    readonly_fields = [f.name for f in Instance._meta.fields]


@admin.register(Rejection)
class RejectionAdmin(admin.ModelAdmin):
    list_display = ("id", "protocol", "peer", "code", "detail", "received_at")
    readonly_fields = [f.name for f in Rejection._meta.fields]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "message_type", "sender", "control_id", "state", "app_ack_state", "received_at")
    list_filter = ("state", "message_type", "app_ack_state")
    search_fields = ("=control_id", "sender")
    exclude = ("raw",)
    readonly_fields = [f.name for f in Message._meta.fields if f.name != "raw"] + ["timeline"]

    @admin.display(description="timeline")
    def timeline(self, message: Message) -> str:
        return timeline_html(message_events(message))
