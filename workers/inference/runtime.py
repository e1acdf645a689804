"""The inference runtime: a registry of runnable models, one load per process, device choice
(CUDA when present unless FHIRAI_INFERENCE_DEVICE says otherwise), and run_model(), which reads
de-identified inputs from the blob store and returns the model's output."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

import torch
from django.conf import settings
from pydicom import dcmread

from fhirai import blobs
from workers.inference.errors import ModelInputError
from workers.models import ct_lung

log = logging.getLogger(__name__)
__all__ = ["ModelInputError", "run_model", "device_for", "REGISTRY"]

Runnable = Callable[[list[Any]], dict[str, Any]]
REGISTRY: dict[tuple[str, str], Callable[[torch.device], Runnable]] = {
    (ct_lung.NAME, ct_lung.VERSION): ct_lung.CtLungQuant,
}
_loaded: dict[tuple[str, str], Runnable] = {}


def device_for(setting: str) -> torch.device:
    """`auto` picks CUDA when torch sees a GPU, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def model_load(name: str, version: str) -> Runnable:
    """The process's instance of a registered model (loaded once)."""
    key = (name, version)
    if key not in _loaded:
        if key not in REGISTRY:
            raise ModelInputError(f"model {name} {version} is not installed on this worker")
        _loaded[key] = REGISTRY[key](device_for(settings.FHIRAI_INFERENCE_DEVICE))
    return _loaded[key]


def run_model(name: str, version: str, input_keys: list[str]) -> dict[str, Any]:
    """Run one model on the de-identified instances stored under `input_keys`."""
    if any(not key.startswith("deid/") for key in input_keys):
        raise ModelInputError("inference accepts de-identified inputs only")  # invariant 3, enforced here too
    model = model_load(name, version)
    started = time.perf_counter()
    datasets = [dcmread(BytesIO(blobs.get(key))) for key in input_keys]
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in datasets}
    if len(studies) != 1:
        raise ModelInputError("the inputs of one run must all belong to one study")
    output = model(datasets)
    # Whom the result is about, in the only terms this tier knows: the pseudonyms in the
    # de-identified headers. The write-back stage maps them back through the vault.
    output["subject"] = {"study_uid": studies.pop(), "patient_id": str(datasets[0].get("PatientID", ""))}
    output["runtime"] = {
        "seconds": round(time.perf_counter() - started, 3),
        "device": str(device_for(settings.FHIRAI_INFERENCE_DEVICE)),
    }
    log.info(
        "%s %s ran on %d instances in %.2f s", name, version, len(input_keys), output["runtime"]["seconds"]
    )
    return output
