"""Registers the reference model, CT lung quantification 1.0.0 (runtime: workers/models/ct_lung.py)."""
from django.db import migrations

CODES = "urn:fhirai:ct-lung-quant"


def register(apps, schema_editor):
    ModelRecord = apps.get_model("routing", "ModelRecord")
    ModelRecord.objects.update_or_create(
        name="ct-lung-quant",
        version="1.0.0",
        defaults={
            "title": "CT lung quantification",
            "task": "quantification",
            "accepts": {"modalities": ["CT"], "body_parts": ["CHEST", "LUNG", "THORAX", "THX"]},
            "outputs": {
                "lung_volume": {"coding": {"system": CODES, "code": "lung-volume", "display": "Total lung volume"},
                                "unit": "mL", "decimals": 1},
                "laa950": {"coding": {"system": CODES, "code": "laa-950",
                                      "display": "Lung volume below -950 HU (%LAA-950)"},
                           "unit": "%", "decimals": 2},
            },
            "report_code": {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}],
                            "text": "CT lung quantification (AI)"},
            "enabled": True,
        },
    )


def unregister(apps, schema_editor):
    apps.get_model("routing", "ModelRecord").objects.filter(name="ct-lung-quant", version="1.0.0").delete()


class Migration(migrations.Migration):
    dependencies = [("routing", "0001_initial")]
    operations = [migrations.RunPython(register, unregister)]
