"""URL roots (wiring): the FHIR facade, health, the console."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from fhirai.ui import views as ui

urlpatterns = [
    path("fhir/", include("integrations.fhir.urls")),
    path("hl7/", include("integrations.hl7.urls")),
    path("healthz", ui.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("", ui.home, name="home"),
]
