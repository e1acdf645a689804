"""The inference runtime: which runnable serves a registered model, one load per process (thread
safe: the inference worker runs many task threads that share each model and its micro-batcher),
device choice (CUDA when present unless FHIRAI_INFERENCE_DEVICE says otherwise), warm-up at
worker start, and run_model(), which reads de-identified inputs from the blob store and returns
the model's output.

A model is found, in order:
1. as a package in FHIRAI_MODEL_DIR/<name>/<version>/ (put there by fhirai.routing.registry):
   task classification -> ImageClassifier (TorchScript, ONNX or a state dict of a known
   architecture), task nlp -> ReportNlpModel with the manifest's findings, a built-in format ->
   the built-in class below;
2. as a reference model shipped with fhirai (fhirai/routing/reference/ manifests, the CT lung
   quantification): they need no package directory.

The worker never touches the database: what it needs is the package on disk and the blob keys.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

import torch
from django.conf import settings
from pydicom import dcmread

from fhirai import blobs
from fhirai.context.reports import report_text_from_fhir
from fhirai.routing.manifest import Manifest, ManifestError, manifest_read
from fhirai.routing.reference import REFERENCE_DIR
from workers.inference.errors import ModelInputError
from workers.models import ct_lung
from workers.models.report_nlp import hl7_patient_id  # the ER7 splitter only; spaCy loads on use

log = logging.getLogger(__name__)
__all__ = ["ModelInputError", "run_model", "device_for", "model_load", "models_preload"]


class Runnable(Protocol):
    inputs: str  # "dicom" (datasets) or "text" (de-identified HL7 v2 / plain report text)

    def __call__(self, items: list[Any]) -> dict[str, Any]: ...


def _ct_lung(device: torch.device, package: Path | None, manifest: Manifest | None) -> Runnable:
    return ct_lung.CtLungQuant(device)


def _ct_lung_change(device: torch.device, package: Path | None, manifest: Manifest | None) -> Runnable:
    return ct_lung.CtLungChange(device)


BUILTINS: dict[tuple[str, str], Callable[[torch.device, Path | None, Manifest | None], Runnable]] = {
    (ct_lung.NAME, ct_lung.VERSION): _ct_lung,
    (ct_lung.CHANGE_NAME, ct_lung.CHANGE_VERSION): _ct_lung_change,
}
_loaded: dict[tuple[str, str], Runnable] = {}
_load_lock = threading.Lock()


def device_for(setting: str) -> torch.device:
    """`auto` picks CUDA when torch sees a GPU, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def _find_package(name: str, version: str) -> tuple[Path | None, Manifest | None]:
    for base in (Path(settings.FHIRAI_MODEL_DIR), REFERENCE_DIR):
        package = base / name / version
        if (package / "manifest.json").is_file():
            try:
                return package, manifest_read(package)
            except ManifestError as exc:
                raise ModelInputError(f"model package {name} {version} is unusable: {exc}") from None
    return None, None


def _construct(name: str, version: str) -> Runnable:
    device = device_for(settings.FHIRAI_INFERENCE_DEVICE)
    package, manifest = _find_package(name, version)
    if (name, version) in BUILTINS:
        return BUILTINS[(name, version)](device, package, manifest)
    if manifest is None or package is None:
        raise ModelInputError(f"model {name} {version} is not installed on this worker")
    if manifest.task == "nlp":
        from workers.models.report_nlp import ReportNlpModel  # spaCy loads only where NLP runs

        return ReportNlpModel(device, manifest.outputs["findings"])
    if manifest.task == "classification" and manifest.format != "builtin":
        from workers.models.classifier import ImageClassifier

        return ImageClassifier(package, manifest, device)
    raise ModelInputError(f"model {name} {version}: no runtime for a {manifest.format} {manifest.task} model")


def model_load(name: str, version: str) -> Runnable:
    """The process's instance of a registered model (loaded and warmed up once)."""
    key = (name, version)
    model = _loaded.get(key)
    if model is None:
        with _load_lock:
            model = _loaded.get(key)
            if model is None:
                started = time.perf_counter()
                model = _construct(name, version)
                _loaded[key] = model
                log.info("loaded %s %s in %.2f s", name, version, time.perf_counter() - started)
    return model


def models_installed() -> list[tuple[str, str]]:
    """Every model this worker can serve: packages in FHIRAI_MODEL_DIR, reference models."""
    found = set(BUILTINS)
    for base in (Path(settings.FHIRAI_MODEL_DIR), REFERENCE_DIR):
        if base.is_dir():
            found.update((m.parent.parent.name, m.parent.name) for m in base.glob("*/*/manifest.json"))
    return sorted(found)


def models_preload(spec: str | None = None) -> list[tuple[str, str]]:
    """Load (and so warm up) the models FHIRAI_INFERENCE_PRELOAD names at worker start, so the
    first study does not pay for it; a model that fails to load is logged and skipped (its jobs
    fail visibly when they come)."""
    spec = settings.FHIRAI_INFERENCE_PRELOAD if spec is None else spec
    if not spec.strip():
        return []
    if spec.strip() == "all":
        wanted = models_installed()
    else:
        wanted = [tuple(item.strip().split(":", 1)) for item in spec.split(",") if ":" in item]  # type: ignore[misc]
    loaded = []
    for name, version in wanted:
        try:
            model_load(name, version)
            loaded.append((name, version))
        except Exception as exc:  # noqa: BLE001 - one broken package must not stop the worker
            log.error("could not preload %s %s: %s", name, version, exc)
    return loaded


def run_model(
    name: str,
    version: str,
    input_keys: list[str],
    prior_keys: list[str] | None = None,
    prior_days: int | None = None,
) -> dict[str, Any]:
    """Run one model on the de-identified items stored under `input_keys`: DICOM instances of one
    study, or the de-identified message of one clinical report; `prior_keys`, for a model that
    reads a prior, the de-identified instances of the same patient's earlier study, `prior_days`
    how many days earlier it was (a number: the de-identified headers may carry no dates)."""
    prior_keys = list(prior_keys or [])
    if not input_keys or any(not key.startswith("deid/") for key in input_keys + prior_keys):
        raise ModelInputError("inference accepts de-identified inputs only")  # invariant 3, enforced here too
    model = model_load(name, version)
    started = time.perf_counter()
    if getattr(model, "inputs", "dicom") == "text":
        texts = [blobs.get(key).decode("utf-8", errors="replace") for key in input_keys]
        if texts[0].lstrip().startswith("{"):  # a de-identified FHIR DiagnosticReport
            try:
                resource = json.loads(texts[0])
            except ValueError:
                raise ModelInputError("the report is neither HL7 v2 nor FHIR JSON") from None
            output = model([report_text_from_fhir(resource)])
            output["subject"] = {"patient_ref": str(resource.get("subject", {}).get("reference", ""))}
        else:
            output = model(texts)
            output["subject"] = {"patient_id": hl7_patient_id(texts[0])}
    else:
        datasets = [dcmread(BytesIO(blobs.get(key))) for key in input_keys]
        studies = {str(ds.get("StudyInstanceUID", "")) for ds in datasets}
        if len(studies) != 1:
            raise ModelInputError("the inputs of one run must all belong to one study")
        if prior_keys and getattr(model, "reads_priors", False):
            output = model(datasets, priors=_prior_datasets(prior_keys, datasets[0]), prior_days=prior_days)
        else:
            output = model(datasets)
        # Whom the result is about, in the only terms this tier knows: the pseudonyms in the
        # de-identified headers. The write-back stage maps them back through the vault.
        output["subject"] = {"study_uid": studies.pop(), "patient_id": str(datasets[0].get("PatientID", ""))}
    output["runtime"] = {
        "seconds": round(time.perf_counter() - started, 3),
        "device": str(device_for(settings.FHIRAI_INFERENCE_DEVICE)),
    }
    log.info("%s %s ran on %d items in %.2f s", name, version, len(input_keys), output["runtime"]["seconds"])
    return output


def _prior_datasets(keys: list[str], current: Any) -> list[Any]:
    """The prior's instances: one study, another than the current one, of the same pseudonymous
    patient (a prior of someone else must never reach a comparison)."""
    datasets = [dcmread(BytesIO(blobs.get(key))) for key in keys]
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in datasets}
    if len(studies) != 1 or studies == {str(current.get("StudyInstanceUID", ""))}:
        raise ModelInputError("the prior's inputs must be one other study")
    if {str(ds.get("PatientID", "")) for ds in datasets} != {str(current.get("PatientID", ""))}:
        raise ModelInputError("the prior study is of another patient")
    return datasets
