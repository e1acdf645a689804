"""Celery tasks (thin wrappers around domain functions) and the inference runtime."""
