from __future__ import annotations

from django.apps import AppConfig


class Config(AppConfig):
    name = "fhirai.subscriptions"
    label = "subscriptions"
    default_auto_field = "django.db.models.BigAutoField"
    verbose_name = "FHIR subscriptions"
