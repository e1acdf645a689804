"""Test settings: the product's settings with the real services of this machine as defaults
(PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379), each overridable by the environment."""

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/fhirai")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9")
os.environ.setdefault("FHIRAI_DATA_DIR", tempfile.mkdtemp(prefix="fhirai-test-"))
os.environ.setdefault("FHIRAI_DEID_SECRET", "test-secret-not-for-production")

from fhirai.settings import *  # noqa: E402,F403
