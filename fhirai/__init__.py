"""fhirai: the Django project and the core domain (see ../shared/DESIGN.md)."""

from __future__ import annotations

from fhirai.celery import app as celery_app

__all__ = ["celery_app"]
