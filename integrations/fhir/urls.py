from __future__ import annotations

from django.urls import path

from integrations.fhir import views

urlpatterns = [
    path("", views.base_endpoint, name="fhir-base"),
    path("metadata", views.metadata, name="fhir-metadata"),
    path("_history", views.history, name="fhir-history-system"),
    path("<str:rtype>/_search", views.search_post, name="fhir-search-post"),
    path("<str:rtype>/_history", views.history, name="fhir-history-type"),
    path("<str:rtype>/<str:rid>/_history/<str:vid>", views.vread, name="fhir-vread"),
    path("<str:rtype>/<str:rid>/_history", views.history, name="fhir-history-instance"),
    path("<str:rtype>/<str:rid>", views.instance_endpoint, name="fhir-instance"),
    path("<str:rtype>", views.type_endpoint, name="fhir-type"),
]
