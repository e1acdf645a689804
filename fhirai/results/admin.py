from __future__ import annotations

from django.contrib import admin

from fhirai.results.models import Delivery, FhirResource


@admin.register(FhirResource)
class FhirResourceAdmin(admin.ModelAdmin):
    list_display = ("id", "resource_type", "rid", "version_id", "last_updated", "study_id")
    list_filter = ("resource_type",)
    readonly_fields = [f.name for f in FhirResource._meta.fields]


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "study_id", "destination", "state", "attempts", "last_status", "next_attempt_at")
    list_filter = ("state", "destination")
    readonly_fields = [f.name for f in Delivery._meta.fields]
