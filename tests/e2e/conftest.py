"""Fixtures of the end-to-end tests: a fresh PostgreSQL database and a Redis broker database per
test, and products (the real `manage.py run`) started on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from tests.support.phantom import Phantom
from tests.support.product import FreshDatabase, Product

REDIS_URL = os.environ.get("FHIRAI_E2E_BROKER_URL", "redis://127.0.0.1:6379/11")


def write_study(ph: Phantom, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, raw in enumerate(ph.files):
        (directory / f"ct{i:04d}.dcm").write_bytes(raw)
    return directory


@pytest.fixture
def database():
    with FreshDatabase(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/fhirai")) as db:
        yield db


@pytest.fixture
def broker_url():
    redis.Redis.from_url(REDIS_URL).flushdb()
    yield REDIS_URL
    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture
def make_product(tmp_path, database, broker_url):
    started: list[Product] = []

    def make(**env: str) -> Product:
        # Own broker keys: a product left running by an interrupted run cannot take this one's tasks.
        isolation = {
            "DATABASE_URL": database.url,
            "CELERY_BROKER_URL": broker_url,
            "FHIRAI_BROKER_KEY_PREFIX": f"{database.name}:",
        }
        product = Product(tmp_path / "var", {**isolation, **env})
        if not started:
            product.manage("migrate", "--noinput")
        started.append(product)
        return product

    yield make
    for product in started:
        product.stop()
