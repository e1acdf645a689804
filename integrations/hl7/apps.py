from __future__ import annotations

from django.apps import AppConfig


class Config(AppConfig):
    name = "integrations.hl7"
    label = "hl7"
