"""Model packages: a directory holding `manifest.json` and the model's weights. The manifest says
what the model is, which studies or messages it accepts, how its input is prepared, what its
outputs mean in codes, and how it should run. This module reads and checks a manifest (pure
Python: the domain and the workers both use it, neither needs the other).

manifest.json:

    {
      "name": "cxr-densenet121",                 # [a-z0-9][a-z0-9._-]*, with version unique
      "version": "1.0.0",
      "title": "Chest radiograph findings (DenseNet-121)",
      "task": "classification",                  # classification | quantification | nlp
      "format": "state_dict",                    # torchscript | onnx | state_dict | builtin
      "weights": "weights.pt",                   # file in the package (not for builtin)
      "sha256": "...",                           # of the weights file; checked at register and load
      "architecture": {"name": "densenet121", "num_classes": 14, "in_channels": 1},   # state_dict only
      "accepts": {
        "modalities": ["CR", "DX"], "body_parts": ["CHEST"], "sop_classes": ["1.2.840..."],
        "message_types": ["ORU^R01"]             # nlp models: HL7 message types (and FHIR DiagnosticReport)
      },
      "input": {                                 # images (classification)
        "size": [224, 224], "channels": 1,       # channels 1 or 3 (grey replicated)
        "window": {"center": 0, "width": 0},     # omitted: the dataset's own VOI window, else min-max
        "mean": [0.5], "std": [0.25]             # after scaling the window to [0, 1]
      },
      "outputs": {
        "activation": "sigmoid",                 # sigmoid | softmax | none (the model already gives probabilities)
        "labels": [                              # classification: index order of the model's output
          {"name": "pneumothorax", "threshold": 0.5,
           "coding": {"system": "http://snomed.info/sct", "code": "36118008", "display": "Pneumothorax"}}
        ],
        "measurements": {                        # quantification: name -> coding, UCUM unit, decimals
          "lung_volume": {"coding": {...}, "unit": "mL", "decimals": 1}
        },
        "findings": [                            # nlp: target phrases per coded finding
          {"name": "pneumothorax", "phrases": ["pneumothorax", "PTX"], "coding": {...}}
        ]
      },
      "priors": {"max_age_days": 1825, "required": false},   # image models: the patient's previous
                                                  # comparable study too (fhirai.routing.priors)
      "runtime": {"device": "auto", "precision": "bf16", "max_batch": 64, "max_wait_ms": 5.0,
                  "channels_last": true},
      "report_code": {"coding": [...], "text": "..."}
    }

Everything but name, version, title, task, format and outputs has a default.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
TASKS = ("classification", "quantification", "nlp")
FORMATS = ("torchscript", "onnx", "state_dict", "builtin")
ACTIVATIONS = ("sigmoid", "softmax", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
ARCHITECTURES = ("densenet121", "densenet")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ManifestError(ValueError):
    """The package cannot be registered; the message says which field and why."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    title: str
    task: str
    format: str
    weights: str
    sha256: str
    architecture: dict[str, Any]
    accepts: dict[str, list[str]]
    input: dict[str, Any]
    outputs: dict[str, Any]
    runtime: dict[str, Any]
    report_code: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    priors: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[dict[str, Any]]:
        return list(self.outputs.get("labels", []))


def _coding(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not value.get("code") or not value.get("system"):
        raise ManifestError(f"{where}: a coding needs system and code")
    return {k: str(value[k]) for k in ("system", "code", "display") if value.get(k)}


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ManifestError(f"{where}: expected a list of strings")
    return list(value)


ACCEPT_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "modalities": (re.compile(r"[A-Z][A-Z0-9]{1,15}"), "a DICOM modality code such as CT or CR"),
    "body_parts": (re.compile(r"[A-Z0-9][A-Z0-9 _]{0,15}"), "a Body Part Examined term such as CHEST"),
    "sop_classes": (re.compile(r"[0-2](\.(0|[1-9][0-9]*))+"), "a SOP Class UID"),
    "message_types": (
        re.compile(r"[A-Z0-9]{3}\^[A-Z0-9]{3}|DiagnosticReport"),
        "an HL7 message type such as ORU^R01, or DiagnosticReport",
    ),
    "image_types": (re.compile(r"[A-Z0-9 _]{1,16}"), "an Image Type value such as AXIAL or PRIMARY"),
    "planes": (re.compile(r"AXIAL|CORONAL|SAGITTAL|OBLIQUE"), "axial, coronal, sagittal or oblique"),
}
ACCEPT_SCALARS = ("min_instances", "qa")


def accepts_clean(task: str, accepts: dict[str, Any]) -> dict[str, Any]:
    """What a model is routed, checked: each value well-formed for its key, NLP models by message
    type only, image models by study attributes only. ManifestError says what is wrong."""
    out: dict[str, Any] = {}
    for key, values in accepts.items():
        if key == "min_instances":
            if values is not None and (
                not isinstance(values, int) or isinstance(values, bool) or not 1 <= values <= 10000
            ):
                raise ManifestError("accepts.min_instances: a whole number from 1 to 10000")
            out[key] = values
            continue
        if key == "qa":
            if values is not None and not isinstance(values, bool):
                raise ManifestError("accepts.qa: true (reads daily QA / phantom studies only) or false")
            out[key] = values
            continue
        if key not in ACCEPT_PATTERNS:
            raise ManifestError(f"accepts.{key}: not a routing key ({', '.join(ACCEPT_PATTERNS)})")
        pattern, what = ACCEPT_PATTERNS[key]
        cleaned = []
        for value in _strings(values, f"accepts.{key}"):
            value = value.strip() if key in ("sop_classes", "message_types") else value.strip().upper()
            if key == "message_types":
                value = "DiagnosticReport" if value.upper() == "DIAGNOSTICREPORT" else value.upper()
            if key == "planes":
                value = value.upper()
            if not pattern.fullmatch(value) or len(value) > 64:
                raise ManifestError(f"accepts.{key}: {value!r} is not {what}")
            cleaned.append(value.lower() if key == "planes" else value)
        out[key] = list(dict.fromkeys(cleaned))
    if task == "nlp":
        if any(out.get(k) for k in ("modalities", "body_parts", "sop_classes", "image_types", "planes")):
            raise ManifestError("an NLP model reads report text: route it by message_types only")
        if "message_types" in out and not out["message_types"]:
            raise ManifestError("accepts.message_types: an NLP model needs at least one")
    elif out.get("message_types"):
        raise ManifestError(
            "an image model is routed by modalities, body parts or SOP classes, not message types"
        )
    return out


def priors_clean(task: str, value: Any) -> dict[str, Any]:
    """The manifest's "priors": {} when the model reads no prior, else {"max_age_days": N (how far
    back a comparable study may be, default 1825), "required": bool (fail rather than run without
    one, default false)}."""
    if value in (None, {}, False):
        return {}
    if not isinstance(value, dict):
        raise ManifestError('priors: an object such as {"max_age_days": 1825, "required": false}')
    unknown = set(value) - {"max_age_days", "required"}
    if unknown:
        raise ManifestError(f"priors.{sorted(unknown)[0]}: not a priors option (max_age_days, required)")
    if task == "nlp":
        raise ManifestError("priors: an NLP model reads report text, not prior studies")
    age = value.get("max_age_days", 1825)
    if not isinstance(age, int) or isinstance(age, bool) or not 1 <= age <= 36500:
        raise ManifestError("priors.max_age_days: a whole number of days from 1 to 36500")
    required = value.get("required", False)
    if not isinstance(required, bool):
        raise ManifestError("priors.required: true or false")
    return {"max_age_days": age, "required": required}


def manifest_parse(data: dict[str, Any]) -> Manifest:
    """Check a manifest's content and fill in defaults."""
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a JSON object")
    for key in ("name", "version", "title", "task", "format", "outputs"):
        if not data.get(key):
            raise ManifestError(f"{key}: required")
    name, version = str(data["name"]), str(data["version"])
    if not NAME_RE.match(name):
        raise ManifestError("name: lower-case letters, digits, '.', '_' and '-', at most 64")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$", version):
        raise ManifestError("version: at most 32 letters, digits, '.', '_', '+' and '-'")
    task, fmt = data["task"], data["format"]
    if task not in TASKS:
        raise ManifestError(f"task: one of {', '.join(TASKS)}")
    if fmt not in FORMATS:
        raise ManifestError(f"format: one of {', '.join(FORMATS)}")
    weights = str(data.get("weights", ""))
    if fmt != "builtin" and (not weights or "/" in weights or weights.startswith(".")):
        raise ManifestError("weights: the name of a file in the package")
    architecture = dict(data.get("architecture") or {})
    if fmt == "state_dict" and architecture.get("name") not in ARCHITECTURES:
        raise ManifestError(f"architecture.name: one of {', '.join(ARCHITECTURES)} for a state_dict")
    accepts_in = data.get("accepts") or {}
    accepts = {
        key: _strings(accepts_in.get(key), f"accepts.{key}")
        for key in ("modalities", "body_parts", "sop_classes", "message_types", "image_types", "planes")
    }
    accepts.update(accepts_clean(task, {k: accepts_in[k] for k in ACCEPT_SCALARS if k in accepts_in}))
    outputs = dict(data["outputs"])
    activation = outputs.setdefault("activation", "sigmoid")
    if activation not in ACTIVATIONS:
        raise ManifestError(f"outputs.activation: one of {', '.join(ACTIVATIONS)}")
    if task == "classification":
        labels = outputs.get("labels")
        if not isinstance(labels, list) or not labels:
            raise ManifestError("outputs.labels: a classifier needs its labels in output order")
        seen = set()
        for i, label in enumerate(labels):
            if not isinstance(label, dict) or not label.get("name"):
                raise ManifestError(f"outputs.labels[{i}].name: required")
            if label["name"] in seen:
                raise ManifestError(f"outputs.labels[{i}].name: {label['name']!r} twice")
            seen.add(label["name"])
            label["coding"] = _coding(label.get("coding"), f"outputs.labels[{i}].coding")
            threshold = float(label.get("threshold", 0.5))
            if not 0.0 <= threshold <= 1.0:
                raise ManifestError(f"outputs.labels[{i}].threshold: between 0 and 1")
            label["threshold"] = threshold
    elif task == "quantification":
        measurements = outputs.get("measurements")
        if not isinstance(measurements, dict) or not measurements:
            raise ManifestError("outputs.measurements: a quantification model needs its measurements")
        for key, spec in measurements.items():
            spec["coding"] = _coding(spec.get("coding"), f"outputs.measurements.{key}.coding")
            if not spec.get("unit"):
                raise ManifestError(f"outputs.measurements.{key}.unit: a UCUM unit is required")
            spec["decimals"] = int(spec.get("decimals", 2))
    else:
        findings = outputs.get("findings")
        if not isinstance(findings, list) or not findings:
            raise ManifestError("outputs.findings: an NLP model needs its target findings")
        for i, finding in enumerate(findings):
            if not finding.get("name"):
                raise ManifestError(f"outputs.findings[{i}].name: required")
            finding["phrases"] = _strings(
                finding.get("phrases") or [finding["name"]], f"outputs.findings[{i}]"
            )
            finding["coding"] = _coding(finding.get("coding"), f"outputs.findings[{i}].coding")
    input_spec = dict(data.get("input") or {})
    if task == "classification":
        size = input_spec.setdefault("size", [224, 224])
        if not (
            isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
        ):
            raise ManifestError("input.size: [rows, columns]")
        channels = input_spec.setdefault("channels", 1)
        if channels not in (1, 3):
            raise ManifestError("input.channels: 1 or 3")
        for key in ("mean", "std"):
            values = input_spec.setdefault(key, [0.0] * channels if key == "mean" else [1.0] * channels)
            if not isinstance(values, list) or len(values) not in (1, channels):
                raise ManifestError(f"input.{key}: one value or one per channel")
    runtime = {
        "device": "auto",
        "precision": "fp32",
        "max_batch": 32,
        "max_wait_ms": 5.0,
        "channels_last": False,
    }
    runtime.update(data.get("runtime") or {})
    if runtime["precision"] not in PRECISIONS:
        raise ManifestError(f"runtime.precision: one of {', '.join(PRECISIONS)}")
    if int(runtime["max_batch"]) < 1:
        raise ManifestError("runtime.max_batch: at least 1")
    return Manifest(
        name=name,
        version=version,
        title=str(data["title"])[:128],
        task=task,
        format=fmt,
        weights=weights,
        sha256=str(data.get("sha256", "")).lower(),
        architecture=architecture,
        accepts=accepts,
        input=input_spec,
        outputs=outputs,
        runtime=runtime,
        report_code=dict(data.get("report_code") or {"text": str(data["title"])}),
        raw=data,
        priors=priors_clean(task, data.get("priors")),
    )


def manifest_read(package: Path) -> Manifest:
    """Read and check `package`/manifest.json, and the weights' checksum when one is given."""
    path = Path(package) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST} in {package}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{MANIFEST} is not valid JSON: {exc}") from None
    manifest = manifest_parse(data)
    if manifest.format != "builtin":
        weights = Path(package) / manifest.weights
        if not weights.is_file():
            raise ManifestError(f"weights: {manifest.weights} is not in the package")
        if manifest.sha256 and file_sha256(weights) != manifest.sha256:
            raise ManifestError(f"sha256: {manifest.weights} does not match the manifest's checksum")
    return manifest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
