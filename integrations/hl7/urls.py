from __future__ import annotations

from django.urls import path

from integrations.hl7 import views

urlpatterns = [path("", views.receive, name="hl7-receive")]
