from __future__ import annotations

from django.apps import AppConfig


class Config(AppConfig):
    name = "fhirai.webhooks"
    label = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"
