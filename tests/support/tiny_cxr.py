"""Synthetic chest-radiograph-like DX images and a tiny trained classifier packaged as a
bring-your-own model, built in code (no patient data, ever; every identifier is invented).

The images are cartoons, not anatomy: a soft-tissue trunk in air, two dark lung fields, a bright
mediastinum and spine, Gaussian noise, and jitter in position, size, contrast, stored-value
scaling, VOI window and photometric interpretation (some MONOCHROME1, stored inverted). Two
independent findings make a multi-label problem that a small CNN learns in seconds:

- `opacity`: a bright round blob in one lung field;
- `line`: a thin bright vertical line over a lung field, like a catheter.

The model is the generic DenseNet of workers/models/densenet.py, trained through the runtime's
own preprocessing (workers/inference/preprocess.py), so what the tests classify is prepared
exactly as what the model learnt from. Training is seeded and cached per process: the three
package formats share one training run. The codes are in a local test system, not SNOMED CT:
these findings are synthetic, and a real code would claim a meaning they do not have.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from fhirai.routing.manifest import MANIFEST, file_sha256
from workers.inference.preprocess import image_preprocess, input_spec
from workers.models.densenet import DenseNet

LABELS = ("opacity", "line")
TEST_SYSTEM = "urn:fhirai:test"
ARCHITECTURE = {
    "name": "densenet",
    "block_layers": [2, 2],
    "growth_rate": 8,
    "bn_size": 2,
    "init_features": 16,
    "num_classes": len(LABELS),
    "in_channels": 1,
}
INPUT = {"size": [48, 48], "channels": 1, "mean": [0.5], "std": [0.25]}
WEIGHTS = {"state_dict": "weights.pt", "torchscript": "model.ts", "onnx": "model.onnx"}
IDENTITY = {
    "PatientName": "Synthetic^Tiny^Q",
    "PatientID": "FAKE-0001",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "FAKE-ACC-1",
    "InstitutionName": "Example Test Hospital",
}
STORED_MAX = 4095  # 12 bits stored


@dataclass(frozen=True)
class Case:
    """One synthetic image and its truth."""

    dataset: Dataset
    opacity: bool
    line: bool


def dx_dataset(
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    uid_seed: str = "tiny-cxr",
    study_uid: str | None = None,
) -> Dataset:
    """A DX dataset (explicit VR little endian) holding `stored` (rows x columns, or frames x rows
    x columns for a multi-frame; uint8/uint16 or rows x columns x 3 uint8 for RGB)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "instance"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    for keyword, value in IDENTITY.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID = study_uid or generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[ds.StudyInstanceUID, "series"])
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.StudyDate, ds.StudyTime = "20260315", "083000"
    rgb = stored.ndim == 3 and stored.shape[-1] == 3
    frames = stored.shape[0] if stored.ndim == 3 and not rgb else 1
    ds.Rows, ds.Columns = stored.shape[-3:-1] if rgb else stored.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else photometric
    if rgb:
        ds.PlanarConfiguration = 0
    bits = 8 if stored.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, 8 if bits == 8 else 12, 7 if bits == 8 else 11
    ds.PixelRepresentation = 0
    if not rgb:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = round(window[0], 2), round(window[1], 2)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def _density(rng: np.random.Generator, size: int, opacity: bool, line: bool) -> np.ndarray:
    """Radiographic density in about [0, 1] (bright = dense) of one synthetic chest."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.04, 0.04)
    scale = rng.uniform(0.9, 1.1)
    img = np.full((size, size), 0.05)
    trunk = ((xx - cx) / (0.46 * scale)) ** 2 + ((yy - cy - 0.05) / (0.5 * scale)) ** 2 <= 1
    img[trunk] = 0.55
    lungs = []
    for side in (-1, 1):
        lx = cx + side * 0.19 * scale
        lung = ((xx - lx) / (0.13 * scale)) ** 2 + ((yy - cy + 0.03) / (0.3 * scale)) ** 2 <= 1
        img[lung] = 0.2
        lungs.append((lx, lung))
    img[trunk & (np.abs(xx - cx) < 0.035 * scale)] = 0.8  # spine
    img[((xx - cx + 0.03) / 0.1) ** 2 + ((yy - cy - 0.1) / 0.13) ** 2 <= 1] = 0.7  # heart
    if opacity:
        lx, lung = lungs[rng.integers(2)]
        ox, oy = lx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.15, 0.1)
        r = rng.uniform(0.08, 0.11)
        img += rng.uniform(0.45, 0.6) * np.exp(-(((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * r**2)))
    if line:
        lx, _ = lungs[rng.integers(2)]
        x0 = lx + rng.uniform(-0.06, 0.06)
        bottom = cy + rng.uniform(-0.05, 0.2)
        img[(np.abs(xx - x0) < 1.2 / size) & (yy < bottom)] = 0.95
    img = img * rng.uniform(0.9, 1.1) + rng.uniform(-0.04, 0.04)
    return img + rng.normal(0, 0.03, img.shape)


def cxr_case(seed: int, *, opacity: bool, line: bool, size: int | None = None) -> Case:
    """One synthetic chest radiograph with the given findings; everything else from `seed`."""
    rng = np.random.default_rng(seed)
    size = size or int(rng.choice([64, 64, 96]))
    density = _density(rng, size, opacity, line)
    slope, intercept = ((1.0, 0.0), (0.5, 100.0), (2.0, -1000.0))[rng.integers(3)]
    gain, offset = rng.uniform(2600, 3400), rng.uniform(150, 400)
    values = np.clip(np.rint(density * gain + offset), 0, STORED_MAX)  # MONOCHROME2 stored values
    monochrome1 = rng.random() < 0.3
    stored = (STORED_MAX - values) if monochrome1 else values
    low, high = offset, offset + gain  # density 0..1 in MONOCHROME2 stored values
    if monochrome1:
        low, high = STORED_MAX - high, STORED_MAX - low
    center = (low + high) / 2 * slope + intercept + rng.uniform(-0.05, 0.05) * gain * slope
    width = (high - low) * slope * rng.uniform(1.0, 1.2)
    ds = dx_dataset(
        stored.astype(np.uint16),
        photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
        window=(center, width),
        slope=slope,
        intercept=intercept,
        uid_seed=f"tiny-cxr-{seed}",
    )
    return Case(ds, opacity, line)


def cxr_cases(count: int, *, seed: int) -> list[Case]:
    """`count` cases with every combination of the two findings in turn, seeds from `seed` on."""
    return [cxr_case(seed + i, opacity=bool(i & 1), line=bool(i & 2)) for i in range(count)]


TRAIN_SEED, TRAIN_CASES, EPOCHS, MAX_LR = 10_000, 384, 16, 5e-3


@functools.lru_cache(maxsize=1)
def trained_state() -> dict[str, torch.Tensor]:
    """The tiny DenseNet's weights after a few seconds of seeded training on synthetic images
    (seeds TRAIN_SEED on; test with others). Cached: every package format gets these same
    weights, so do not modify them."""
    spec = input_spec(INPUT)
    cases = cxr_cases(TRAIN_CASES, seed=TRAIN_SEED)
    x = torch.stack([image_preprocess(c.dataset, spec) for c in cases])
    y = torch.tensor([[float(c.opacity), float(c.line)] for c in cases])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: more threads only add synchronisation on a busy box
    try:
        return _train(x, y)
    finally:
        torch.set_num_threads(threads)


def _train(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = tiny_densenet()
    optimiser = torch.optim.AdamW(model.parameters(), lr=MAX_LR, weight_decay=1e-4)
    batches = x.split(32)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=MAX_LR, total_steps=EPOCHS * len(batches)
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(x), generator=order).split(32):
            optimiser.zero_grad(set_to_none=True)
            loss_fn(model(x[batch]), y[batch]).backward()
            optimiser.step()
            schedule.step()
    model.eval()
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def tiny_densenet() -> DenseNet:
    """The generic DenseNet that ARCHITECTURE describes, randomly initialised."""
    params = {k: v for k, v in ARCHITECTURE.items() if k not in ("name", "block_layers")}
    return DenseNet(tuple(ARCHITECTURE["block_layers"]), **params)


def trained_model() -> DenseNet:
    """A fresh module holding the trained weights, in eval mode."""
    model = tiny_densenet()
    model.load_state_dict(trained_state())
    return model.eval()


def tiny_manifest(fmt: str, **overrides: Any) -> dict[str, Any]:
    """The package's manifest content (without the checksum); `overrides` replace top-level keys."""
    manifest: dict[str, Any] = {
        "name": f"tiny-cxr-{fmt.replace('_', '-')}",
        "version": "1.0.0",
        "title": "Synthetic chest radiograph findings (test model)",
        "task": "classification",
        "format": fmt,
        "weights": WEIGHTS[fmt],
        "architecture": dict(ARCHITECTURE) if fmt == "state_dict" else {},
        "accepts": {"modalities": ["DX", "CR"], "body_parts": ["CHEST"]},
        "input": dict(INPUT),
        "outputs": {
            "activation": "sigmoid",
            "labels": [
                {
                    "name": "opacity",
                    "threshold": 0.5,
                    "coding": {
                        "system": TEST_SYSTEM,
                        "code": "opacity",
                        "display": "Synthetic round opacity",
                    },
                },
                {
                    "name": "line",
                    "threshold": 0.5,
                    "coding": {"system": TEST_SYSTEM, "code": "line", "display": "Synthetic line marker"},
                },
            ],
        },
        "runtime": {"device": "auto", "precision": "fp32", "max_batch": 16, "max_wait_ms": 5.0},
    }
    manifest.update(overrides)
    return manifest


def tiny_model_package(tmp_dir: Path, fmt: str, *, onnx_dynamic_batch: bool = True, **overrides: Any) -> Path:
    """Write a model package (manifest.json + weights in `fmt`) of the trained tiny model under
    `tmp_dir`/<name>/1.0.0 and return its directory. `overrides` go into the manifest."""
    manifest = tiny_manifest(fmt, **overrides)
    package = Path(tmp_dir) / manifest["name"] / manifest["version"]
    package.mkdir(parents=True, exist_ok=True)
    weights = package / manifest["weights"]
    size = manifest["input"]["size"]
    example = torch.zeros(1, ARCHITECTURE["in_channels"], *size)
    if fmt == "state_dict":
        torch.save(trained_state(), weights)
    elif fmt == "torchscript":
        model = trained_model()  # trains on first use: not under no_grad
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.9+ deprecates TorchScript
            torch.jit.save(torch.jit.trace(model, example), str(weights))
    elif fmt == "onnx":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter
            torch.onnx.export(
                trained_model(),
                (example,),
                str(weights),
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}} if onnx_dynamic_batch else None,
                opset_version=17,
            )
    else:
        raise ValueError(f"no tiny package in format {fmt!r}")
    manifest["sha256"] = file_sha256(weights)
    (package / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return package
