from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.phantom import Phantom, ct_phantom


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    """A small CT chest phantom (24 slices of 96 x 96) with known truth."""
    return ct_phantom()


@pytest.fixture
def blob_dir(settings, tmp_path: Path) -> Path:  # noqa: ANN001 - pytest-django's settings fixture
    settings.FHIRAI_BLOB_DIR = tmp_path / "blobs"
    return settings.FHIRAI_BLOB_DIR
