"""fhirai: the Django project and the core domain (see ../shared/DESIGN.md)."""

from __future__ import annotations

try:
    from fhirai.celery import app as celery_app
except ModuleNotFoundError as exc:  # a GPU host running only torch (the CUDA tests, the benchmark)
    if exc.name not in ("celery", "django", "kombu"):
        raise
    celery_app = None

__all__ = ["celery_app"]
