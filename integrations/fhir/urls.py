from __future__ import annotations

from django.urls import path

from integrations.fhir import views

urlpatterns = [
    path("", views.base_endpoint, name="fhir-base"),
    path("metadata", views.metadata, name="fhir-metadata"),
    path("<str:rtype>/<str:rid>", views.instance_endpoint, name="fhir-instance"),
    path("<str:rtype>", views.type_endpoint, name="fhir-type"),
]
