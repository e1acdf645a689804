"""Test settings: the product's settings with the real services of this machine as defaults
(PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379), each overridable by the environment."""

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/fhirai")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9")
os.environ.setdefault("FHIRAI_DATA_DIR", tempfile.mkdtemp(prefix="fhirai-test-"))
os.environ.setdefault("FHIRAI_DEID_SECRET", "test-secret-not-for-production")
# The unit tests drive the facade and API anonymously through Django's test client; the product's
# default (tokens required) is what tests/fhirai/api/test_require_tokens.py, the role matrix and
# the end-to-end tests (real processes on fhirai.settings) run with.
os.environ.setdefault("FHIRAI_REQUIRE_TOKENS", "false")

from fhirai.settings import *  # noqa: E402,F403
