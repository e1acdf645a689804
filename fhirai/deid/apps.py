from __future__ import annotations

from django.apps import AppConfig


class Config(AppConfig):
    name = "fhirai.deid"
    label = "deid"
    default_auto_field = "django.db.models.BigAutoField"
