from __future__ import annotations

from django.apps import AppConfig


class Config(AppConfig):
    name = "fhirai.context"
    label = "context"
    default_auto_field = "django.db.models.BigAutoField"
