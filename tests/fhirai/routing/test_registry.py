from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from fhirai.routing.manifest import ManifestError, file_sha256, manifest_parse, manifest_read
from fhirai.routing.models import ModelRecord
from fhirai.routing.registry import model_register, package_dir
from fhirai.routing.rules import report_models

pytestmark = pytest.mark.django_db

LABEL = {"name": "opacity", "coding": {"system": "urn:fhirai:test", "code": "opacity", "display": "Opacity"}}


def manifest(**overrides: object) -> dict:
    data = {
        "name": "cxr-test",
        "version": "1.0.0",
        "title": "Test classifier",
        "task": "classification",
        "format": "torchscript",
        "weights": "model.pt",
        "accepts": {"modalities": ["DX"], "body_parts": ["CHEST"]},
        "outputs": {"labels": [LABEL]},
    }
    data.update(overrides)
    return data


def package(tmp_path: Path, data: dict, weights: bytes = b"weights-v1") -> Path:
    root = tmp_path / f"pkg-{data['name']}-{data['version']}-{len(list(tmp_path.iterdir()))}"
    root.mkdir()
    if data.get("format") != "builtin":
        (root / data["weights"]).write_bytes(weights)
    (root / "manifest.json").write_text(json.dumps(data))
    return root


def test_a_manifest_gets_its_defaults_and_is_checked_field_by_field():
    m = manifest_parse(manifest())
    assert m.input["size"] == [224, 224] and m.input["channels"] == 1
    assert m.runtime["precision"] == "fp32" and m.labels[0]["threshold"] == 0.5
    assert m.accepts["sop_classes"] == [] and m.outputs["activation"] == "sigmoid"
    assert m.priors == {}  # reads no prior unless it asks
    assert manifest_parse(manifest(priors={"required": True})).priors == {
        "max_age_days": 1825,
        "required": True,
    }
    bad = {
        "task": ({"task": "segmentation"}, "task"),
        "format": ({"format": "pickle"}, "format"),
        "name": ({"name": "Has Spaces"}, "name"),
        "labels": ({"outputs": {"labels": []}}, "outputs.labels"),
        "coding": ({"outputs": {"labels": [{"name": "x"}]}}, "coding"),
        "threshold": ({"outputs": {"labels": [LABEL | {"threshold": 2}]}}, "threshold"),
        "arch": ({"format": "state_dict", "architecture": {"name": "resnet"}}, "architecture"),
        "channels": ({"input": {"channels": 2}}, "input.channels"),
        "precision": ({"runtime": {"precision": "int4"}}, "runtime.precision"),
        "weights": ({"weights": "../escape.pt"}, "weights"),
        "priors": ({"priors": ["one"]}, "priors"),
        "priors age": ({"priors": {"max_age_days": 0}}, "priors.max_age_days"),
        "priors required": ({"priors": {"required": "yes"}}, "priors.required"),
        "priors option": ({"priors": {"count": 2}}, "priors.count"),
    }
    for overrides, field in bad.values():
        with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
            manifest_parse(manifest(**overrides))


def test_the_weights_checksum_is_verified(tmp_path):
    root = package(tmp_path, manifest(sha256="0" * 64))
    with pytest.raises(ManifestError, match="sha256"):
        manifest_read(root)
    root = package(tmp_path, manifest(sha256=file_sha256(root / "model.pt")))
    assert manifest_read(root).name == "cxr-test"


def test_registering_copies_the_package_and_a_version_is_immutable(tmp_path, settings):
    settings.FHIRAI_MODEL_DIR = tmp_path / "models"
    (tmp_path / "src").mkdir()
    src = package(tmp_path / "src", manifest())
    (src / "notes.txt").write_text("not part of the package")
    record, created = model_register(src)
    assert created and record.enabled and record.format == "torchscript"
    assert record.sha256 == file_sha256(src / "model.pt") and record.registered_at is not None
    installed = package_dir("cxr-test", "1.0.0")
    assert sorted(p.name for p in installed.iterdir()) == ["manifest.json", "model.pt"]
    # The identical package again: nothing changes. Other weights under the same version: refused.
    assert model_register(src) == (record, False)
    with pytest.raises(ManifestError, match="already registered"):
        model_register(package(tmp_path / "src", manifest(), weights=b"weights-v2"))
    assert (installed / "model.pt").read_bytes() == b"weights-v1"
    # A new version is a new record beside the old one.
    v2, created = model_register(package(tmp_path / "src", manifest(version="1.1.0"), weights=b"v2"))
    assert created and ModelRecord.objects.filter(name="cxr-test").count() == 2


def test_the_command_registers_and_explains_refusals(tmp_path, settings, capsys):
    settings.FHIRAI_MODEL_DIR = tmp_path / "models"
    (tmp_path / "src").mkdir()
    call_command("model_register", str(package(tmp_path / "src", manifest())), "--disabled")
    assert "cxr-test 1.0.0 registered, disabled" in capsys.readouterr().out
    assert not ModelRecord.objects.get(name="cxr-test").enabled
    broken = package(tmp_path / "src", manifest(name="other", outputs={}))
    with pytest.raises(CommandError, match="not registered: outputs: required"):
        call_command("model_register", str(broken))


def test_nlp_packages_route_by_message_type(tmp_path, settings):
    settings.FHIRAI_MODEL_DIR = tmp_path / "models"
    (tmp_path / "src").mkdir()
    finding = {"name": "pneumothorax", "coding": {"system": "http://snomed.info/sct", "code": "36118008"}}
    nlp = manifest(
        name="site-nlp",
        task="nlp",
        format="builtin",
        accepts={"message_types": ["ORU"]},
        outputs={"findings": [finding]},
    )
    record, _ = model_register(package(tmp_path / "src", nlp))
    assert (package_dir("site-nlp", "1.0.0") / "manifest.json").is_file()
    assert record.outputs["findings"][0]["phrases"] == ["pneumothorax"]
    routed = {m.name for m in report_models("ORU^R01")}
    assert {"site-nlp", "chest-report-findings"} <= routed
    assert "site-nlp" not in {m.name for m in report_models("ADT^A08")}
    record.enabled = False
    record.save()
    assert "site-nlp" not in {m.name for m in report_models("ORU^R01")}
