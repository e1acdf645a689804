from __future__ import annotations

from django.apps import AppConfig


class Config(AppConfig):
    name = "fhirai.audit"
    label = "audit"
    default_auto_field = "django.db.models.BigAutoField"
