from __future__ import annotations

from django.contrib import admin

from fhirai.context.models import ClinicalReport, Order, Patient


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ("id", "mrn", "mrn_system", "family", "merged_into", "updated_at")
    search_fields = ("=mrn", "family")
    readonly_fields = [f.name for f in Patient._meta.fields]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "accession", "placer_number", "filler_number", "status", "patient", "updated_at")
    search_fields = ("=accession", "=placer_number", "=filler_number")
    readonly_fields = [f.name for f in Order._meta.fields]


@admin.register(ClinicalReport)
class ClinicalReportAdmin(admin.ModelAdmin):
    list_display = ("id", "accession", "status", "patient", "received_at")
    readonly_fields = [f.name for f in ClinicalReport._meta.fields]
