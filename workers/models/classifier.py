"""Bring-your-own image classifier: a registered model package (TorchScript, ONNX, or a state
dict of a built-in architecture) run on the images of one series, one coded finding per label.

One ImageClassifier serves a model in a worker process and is shared by all its task threads.
Each call preprocesses its images in the calling thread (decoding and resizing are per image and
need no model) and submits them one by one to the model's single MicroBatcher, so images of
concurrent studies run through the network together in batches of up to runtime.max_batch.

Per label the series' result is the highest probability over its images, with the image it came
from: a finding seen on one view of a study is a finding of the study, and the instance lets a
report point at the image (the SR writer and the viewer use its SOP Instance UID).

Loading fails (ModelPackageError) unless a warm-up batch runs and gives one score per label: a
package whose network does not match its manifest is caught at registration or worker start,
not on the first patient. The warm-up also pays for one-off costs (cuDNN autotuning, lazy CUDA
initialisation, onnxruntime's graph optimisation) before the first real request.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from pydicom.dataset import Dataset

from fhirai.routing.manifest import Manifest
from workers.inference.batcher import BatcherStats, MicroBatcher
from workers.inference.errors import ModelInputError
from workers.inference.loaders import BatchModel, ModelPackageError, weights_load
from workers.inference.preprocess import InputSpec, image_preprocess, input_spec, is_image

log = logging.getLogger(__name__)
__all__ = ["ImageClassifier"]

DECIMALS = 4


class ImageClassifier:
    """The runnable for a classification package: DICOM datasets of one series in, findings out."""

    inputs = "dicom"

    def __init__(
        self,
        package: Path,
        manifest: Manifest,
        device: torch.device,
        *,
        timeout_s: float = 60.0,
        intra_op_threads: int | None = None,
    ) -> None:
        if manifest.task != "classification":
            raise ModelPackageError(f"task: {manifest.task} is not an image classification")
        self.name, self.version = manifest.name, manifest.version
        self.labels = manifest.labels
        self.activation = str(manifest.outputs.get("activation", "sigmoid"))
        try:
            self.spec: InputSpec = input_spec(manifest.input)
        except ValueError as exc:
            raise ModelPackageError(str(exc)) from None
        self.model: BatchModel = weights_load(package, manifest, device, intra_op_threads=intra_op_threads)
        self.timeout_s = timeout_s
        self.batcher = MicroBatcher(
            self.model.run,
            max_batch=int(manifest.runtime["max_batch"]),
            max_wait_ms=float(manifest.runtime["max_wait_ms"]),
            device=self.model.device,
            dtype=self.model.dtype,
            timeout_s=timeout_s,
            name=f"classifier-{manifest.name}",
        )
        try:
            self._warm_up(min(int(manifest.runtime["max_batch"]), 2))
        except BaseException:
            self.batcher.close()
            raise

    def _warm_up(self, count: int) -> None:
        """Run one batch of zero images; its rows must have one score per label."""
        shape = (self.spec.channels, *self.spec.size)
        futures = [self.batcher.submit(torch.zeros(shape)) for _ in range(max(1, count))]
        for future in futures:
            try:
                row = future.result(timeout=self.timeout_s)
            except ModelInputError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever the network raised, the package is at fault
                raise ModelPackageError(
                    f"the model does not run on a {' x '.join(map(str, shape))} input: {str(exc)[:300]}"
                ) from None
            if row.numel() != len(self.labels):
                raise ModelPackageError(
                    f"the model gives {row.numel()} output(s) per image; the manifest has "
                    f"{len(self.labels)} label(s)"
                )

    def __call__(self, datasets: list[Dataset]) -> dict[str, Any]:
        """Findings for one series: per label the highest probability over its images. Instances
        without pixels are skipped, undecodable ones too while one image remains."""
        submitted: list[tuple[str, Future[torch.Tensor]]] = []
        problems: list[str] = []
        for ds in datasets:
            if not is_image(ds):
                continue
            try:
                x = image_preprocess(ds, self.spec)
            except ModelInputError as exc:
                problems.append(str(exc))
                continue
            submitted.append((str(ds.get("SOPInstanceUID", "")), self.batcher.submit(x)))
        if problems:
            log.warning("%s %s: %d image(s) skipped: %s", self.name, self.version, len(problems), problems[0])
        if not submitted:
            reason = f": {problems[0]}" if problems else ""
            raise ModelInputError(f"no usable image among {len(datasets)} instance(s){reason}")
        # The batcher answers every future within its timeout; the margin only guards a stuck batcher.
        scores = [(uid, self._probabilities(f.result(timeout=self.timeout_s + 5))) for uid, f in submitted]
        return self._result(scores)

    def _probabilities(self, row: torch.Tensor) -> list[float]:
        row = row.float().reshape(-1)
        if self.activation == "sigmoid":
            row = torch.sigmoid(row)
        elif self.activation == "softmax":
            row = torch.softmax(row, dim=0)
        return [float(v) for v in row]

    def _result(self, scores: list[tuple[str, list[float]]]) -> dict[str, Any]:
        findings = []
        for index, label in enumerate(self.labels):
            uid, probability = max(((uid, p[index]) for uid, p in scores), key=lambda item: item[1])
            # The decision uses the probability as reported, so a reader can always check it.
            probability = round(probability, DECIMALS)
            threshold = float(label.get("threshold", 0.5))
            findings.append(
                {
                    "name": label["name"],
                    "coding": dict(label["coding"]),
                    "probability": probability,
                    "threshold": threshold,
                    "present": probability >= threshold,
                    "instance": uid,
                }
            )
        present = [f for f in findings if f["present"]]
        if present:
            listed = ", ".join(f"{f['name']} ({f['probability']:.2f})" for f in present)
            conclusion = f"Findings above threshold: {listed}."
        else:
            conclusion = "No finding above its threshold."
        return {"findings": findings, "conclusion": conclusion, "instances": len(scores)}

    def stats(self) -> BatcherStats:
        """The micro-batcher's counters (batches formed, mean batch size, failures)."""
        return self.batcher.stats()

    def close(self) -> None:
        """Answer what is queued and stop the batcher's threads. Idempotent."""
        self.batcher.close()
