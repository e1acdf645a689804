"""Registers the reference NLP model, chest-report-findings 1.0.0 (runtime:
workers/models/report_nlp.py; manifest: fhirai/routing/reference/chest-report-findings/1.0.0)."""
import hashlib
import json

from django.db import migrations
from django.utils import timezone

from fhirai.routing.reference import REFERENCE_DIR

PACKAGE = REFERENCE_DIR / "chest-report-findings" / "1.0.0" / "manifest.json"


def register(apps, schema_editor):
    ModelRecord = apps.get_model("routing", "ModelRecord")
    raw = PACKAGE.read_bytes()
    manifest = json.loads(raw)
    ModelRecord.objects.update_or_create(
        name=manifest["name"],
        version=manifest["version"],
        defaults={
            "title": manifest["title"],
            "task": manifest["task"],
            "accepts": manifest["accepts"],
            "outputs": manifest["outputs"],
            "report_code": manifest["report_code"],
            "enabled": True,
            "format": "builtin",
            "sha256": hashlib.sha256(raw).hexdigest(),
            "manifest": manifest,
            "registered_at": timezone.now(),
        },
    )


def unregister(apps, schema_editor):
    apps.get_model("routing", "ModelRecord").objects.filter(name="chest-report-findings").delete()


class Migration(migrations.Migration):
    dependencies = [("routing", "0003_model_packages")]
    operations = [migrations.RunPython(register, unregister)]
