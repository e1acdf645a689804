from __future__ import annotations

from django.apps import AppConfig


class Config(AppConfig):
    name = "fhirai.api"
    label = "api"
