"""DICOMweb (PS3.18): STOW-RS, QIDO-RS and WADO-RS at /dicomweb/."""

from __future__ import annotations

from django.urls import path

from integrations.dicomweb import views

urlpatterns = [
    path("studies", views.studies, name="dicomweb-studies"),
    path("studies/<str:study>", views.study, name="dicomweb-study"),
    path("studies/<str:study>/metadata", views.study_metadata),
    path("studies/<str:study>/series", views.series_search),
    path("studies/<str:study>/series/<str:series>", views.series_retrieve),
    path("studies/<str:study>/series/<str:series>/metadata", views.series_metadata),
    path("studies/<str:study>/series/<str:series>/instances", views.instances_search),
    path("studies/<str:study>/series/<str:series>/instances/<str:sop>", views.instance_retrieve),
    path("studies/<str:study>/series/<str:series>/instances/<str:sop>/metadata", views.instance_metadata),
    path("studies/<str:study>/series/<str:series>/instances/<str:sop>/rendered", views.instance_rendered),
    path(
        "studies/<str:study>/series/<str:series>/instances/<str:sop>/frames/<str:frames>",
        views.instance_frames,
    ),
]
