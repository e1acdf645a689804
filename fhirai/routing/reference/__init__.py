"""Reference model packages shipped with fhirai (manifests only: their runtimes are built in).
A data migration registers them; the inference runtime finds them here when FHIRAI_MODEL_DIR has
no package of that name and version."""

from __future__ import annotations

from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().parent
