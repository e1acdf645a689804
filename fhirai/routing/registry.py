"""The model registry: model packages in, ModelRecord rows out.

Registering a package checks its manifest and weights (fhirai.routing.manifest), copies it into
FHIRAI_MODEL_DIR/<name>/<version>/ (the directory every inference worker loads from: on a
multi-host site it is shared storage or synced to the GPU hosts) and records the model. A
registered version is immutable: registering the same name and version again is a no-op when the
package is identical and refused when it differs, so a result always names exactly the weights
that produced it. The site's choices stay editable: enabled, and the accepts rules routing uses.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fhirai.routing.manifest import MANIFEST, Manifest, ManifestError, file_sha256, manifest_read
from fhirai.routing.models import ModelRecord


def package_dir(name: str, version: str) -> Path:
    """Where a registered package lives on every inference host."""
    return Path(settings.FHIRAI_MODEL_DIR) / name / version


def model_register(source: Path, *, enabled: bool = True) -> tuple[ModelRecord, bool]:
    """Register the package at `source`; returns (record, created)."""
    manifest = manifest_read(Path(source))
    # The identity of a version: its weights, or for a built-in / rules-only package its manifest.
    digest = file_sha256(Path(source) / (manifest.weights if manifest.format != "builtin" else MANIFEST))
    existing = ModelRecord.objects.filter(name=manifest.name, version=manifest.version).first()
    if existing is not None:
        if existing.format == manifest.format and existing.sha256 == digest:
            return existing, False
        raise ManifestError(
            f"{manifest.name} {manifest.version} is already registered with other weights: "
            "give the new package a new version"
        )
    _copy_package(Path(source), package_dir(manifest.name, manifest.version), manifest)
    with transaction.atomic():
        record = ModelRecord.objects.create(
            name=manifest.name,
            version=manifest.version,
            title=manifest.title,
            task=manifest.task,
            accepts={k: v for k, v in manifest.accepts.items() if v},
            outputs=manifest.outputs,
            report_code=manifest.report_code,
            enabled=enabled,
            format=manifest.format,
            sha256=digest,
            manifest=manifest.raw,
            registered_at=timezone.now(),
        )
    return record, True


def _copy_package(source: Path, target: Path, manifest: Manifest) -> None:
    """Copy the manifest and the weights (nothing else; a built-in or rules-only package is its
    manifest) into place atomically: a worker never sees half a package."""
    files = [MANIFEST] + ([manifest.weights] if manifest.format != "builtin" else [])
    if target.exists():
        if all((target / f).is_file() and file_sha256(target / f) == file_sha256(source / f) for f in files):
            return  # left by an earlier attempt whose transaction did not commit
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest.version}-", dir=target.parent))
    try:
        for name in files:
            shutil.copy2(source / name, staging / name)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
