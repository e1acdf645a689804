from __future__ import annotations

from django.urls import path

from integrations.fhir import views

urlpatterns = [
    path("metadata", views.metadata, name="fhir-metadata"),
    path("<str:rtype>/<str:rid>", views.read, name="fhir-read"),
    path("<str:rtype>", views.search, name="fhir-search"),
]
