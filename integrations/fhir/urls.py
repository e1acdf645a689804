from __future__ import annotations

from django.urls import path

from fhirai.api import oauth_views
from integrations.fhir import views

urlpatterns = [
    path("", views.guarded(views.base_endpoint), name="fhir-base"),
    path("metadata", views.metadata, name="fhir-metadata"),
    path(
        ".well-known/smart-configuration",
        oauth_views.smart_configuration_view,
        name="fhir-smart-configuration",
    ),
    path("_history", views.guarded(views.history), name="fhir-history-system"),
    path("<str:rtype>/_search", views.guarded(views.search_post), name="fhir-search-post"),
    path("<str:rtype>/_history", views.guarded(views.history), name="fhir-history-type"),
    path("<str:rtype>/<str:rid>/_history/<str:vid>", views.guarded(views.vread), name="fhir-vread"),
    path("<str:rtype>/<str:rid>/_history", views.guarded(views.history), name="fhir-history-instance"),
    path("<str:rtype>/<str:rid>", views.guarded(views.instance_endpoint), name="fhir-instance"),
    path("<str:rtype>", views.guarded(views.type_endpoint), name="fhir-type"),
]
