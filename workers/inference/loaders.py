"""Model package weights -> a batch function: an N x C x H x W float tensor in, N x K scores out.

A bring-your-own-model package ships its weights in one of three formats (manifest `format`), and
each becomes the same thing, so the micro-batcher and the classifier never see the difference:

- `torchscript`: `torch.jit.load` straight onto the device. The package carries its own code, so
  any architecture runs;
- `onnx`: an onnxruntime session (imported here, lazily: a worker that serves only torch models
  does not need it). CUDA's execution provider comes first when the device is CUDA and the
  installed onnxruntime has it, else the CPU's. onnxruntime does its own host-device copies, so
  the batch function takes and returns CPU tensors (BatchModel.device says where the micro-batcher
  should stack batches). A graph whose batch dimension is fixed (exported without dynamic axes,
  often to 1) still runs: the batch is cut into chunks of that size, the last padded with zeros,
  and the padding rows dropped, so such a model gains nothing from batching but answers correctly;
- `state_dict`: only tensors (`torch.load(weights_only=True)`: a pickle of arbitrary objects would
  run code at load), for an architecture this product builds itself (`densenet121`, or the generic
  `densenet` that a small model describes by its hyper-parameters). Loading is strict: a key that
  is missing or left over means the weights are for another network, and running that would give
  confident nonsense, so the error lists the keys instead.

The weights' sha256 from the manifest is checked again here (the registry checked it on upload):
what runs is what was registered, even if the model directory was changed since.

Precision: `bf16` and `fp16` become the micro-batcher's autocast dtype on CUDA only. On the CPU
autocast is slower than float32 for convolutions and the result is the same model, so it is off.

Failures are ModelPackageError: a ModelInputError (the job fails visibly and is not retried: the
package will not get better by itself) and a ValueError (it is a bad package, like ManifestError).
This file imports torch and the pure-Python manifest module only.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fhirai.routing.manifest import Manifest, file_sha256
from workers.inference.errors import ModelInputError
from workers.models.densenet import DenseNet, densenet121

log = logging.getLogger(__name__)
__all__ = ["BatchModel", "ModelPackageError", "autocast_dtype", "weights_load"]

BatchFn = Callable[[torch.Tensor], torch.Tensor]
# The generic DenseNet's hyper-parameters a manifest may set (workers/models/densenet.py).
DENSENET_KEYS = ("block_layers", "growth_rate", "bn_size", "compression", "init_features")
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}
_LISTED = 8  # keys named in a state-dict mismatch error


class ModelPackageError(ModelInputError, ValueError):
    """The package's weights cannot be loaded or do not fit its manifest; the message says why."""


@dataclass(frozen=True)
class BatchModel:
    """A loaded model: `run` maps a batch on `device` to one row of scores per example, to be
    called under `dtype` autocast (torch.float32: none). `module` is the torch module, if any."""

    run: BatchFn
    device: torch.device
    dtype: torch.dtype
    format: str
    module: nn.Module | None = None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for a manifest precision on `device` (torch.float32 means no autocast):
    reduced precision on CUDA only; bf16 falls back to fp32 on a GPU without bfloat16."""
    if device.type != "cuda" or precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    log.info("precision %s is not supported on %s; running in fp32", precision, device)
    return torch.float32


def weights_load(
    package: Path, manifest: Manifest, device: torch.device, *, intra_op_threads: int | None = None
) -> BatchModel:
    """Load the package's weights (checksum first) as a batch function on `device`.
    `intra_op_threads` sizes onnxruntime's thread pool (None: onnxruntime's default)."""
    path = Path(package) / manifest.weights
    if not path.is_file():
        raise ModelPackageError(f"weights: {manifest.weights} is not in the package")
    if manifest.sha256 and file_sha256(path) != manifest.sha256:
        raise ModelPackageError(f"sha256: {manifest.weights} does not match the manifest's checksum")
    if manifest.format == "onnx":
        return _onnx_load(path, device, intra_op_threads)
    if manifest.format == "torchscript":
        module = _torchscript_load(path, device)
    elif manifest.format == "state_dict":
        module = _state_dict_load(path, manifest, device)
    else:
        raise ModelPackageError(f"format: {manifest.format} weights cannot be loaded from a package")
    return _torch_batch_model(module, manifest, device)


def _torch_batch_model(module: nn.Module, manifest: Manifest, device: torch.device) -> BatchModel:
    module.eval()
    channels_last = bool(manifest.runtime.get("channels_last"))
    if channels_last:
        module.to(memory_format=torch.channels_last)

    def run(batch: torch.Tensor) -> torch.Tensor:
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return module(batch)

    dtype = autocast_dtype(str(manifest.runtime.get("precision", "fp32")), device)
    return BatchModel(run=run, device=device, dtype=dtype, format=manifest.format, module=module)


def _torchscript_load(path: Path, device: torch.device) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch 2.9+ deprecates TorchScript in favour of torch.export; vendors still ship it.
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning
            )
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, ValueError, zip errors...
        raise ModelPackageError(
            f"weights: not a loadable TorchScript archive ({type(exc).__name__})"
        ) from None
    return module


def _state_dict_load(path: Path, manifest: Manifest, device: torch.device) -> nn.Module:
    model = architecture_build(manifest)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError for non-tensor content, zip errors...
        raise ModelPackageError(
            f"weights: not a tensors-only state dict ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    state = state_dict_unwrap(loaded)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when not strict
        raise ModelPackageError(f"weights do not fit {manifest.architecture.get('name')}: {exc}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelPackageError(
            f"weights do not fit {manifest.architecture.get('name')}: "
            + _keys("missing", result.missing_keys)
            + "; "
            + _keys("unexpected", result.unexpected_keys)
        )
    return model.to(device)


def architecture_build(manifest: Manifest) -> nn.Module:
    """The randomly initialised network that manifest.architecture names. num_classes defaults to
    the number of labels, in_channels to input.channels."""
    arch = dict(manifest.architecture)
    name = arch.get("name")
    if name not in ("densenet121", "densenet"):
        raise ModelPackageError(f"architecture.name: no built-in architecture {name!r}")
    allowed = {"name", "num_classes", "in_channels", *(DENSENET_KEYS if name == "densenet" else ())}
    unknown = sorted(set(arch) - allowed)
    if unknown:
        raise ModelPackageError(f"architecture: {name} takes no {', '.join(unknown)}")
    try:
        num_classes = int(arch.get("num_classes", len(manifest.labels)))
        in_channels = int(arch.get("in_channels", manifest.input.get("channels", 1)))
        if name == "densenet121":
            return densenet121(num_classes=num_classes, in_channels=in_channels)
        params: dict[str, Any] = {
            key: float(value) if key == "compression" else int(value)
            for key, value in arch.items()
            if key in DENSENET_KEYS and key != "block_layers"
        }
        block_layers = tuple(int(n) for n in arch.get("block_layers", (6, 12, 24, 16)))
        return DenseNet(block_layers, num_classes=num_classes, in_channels=in_channels, **params)
    except (TypeError, ValueError) as exc:
        raise ModelPackageError(f"architecture: {exc}") from None


def state_dict_unwrap(loaded: Any) -> dict[str, torch.Tensor]:
    """The parameter mapping in a saved file: a bare state dict or a checkpoint's "state_dict",
    without the "module." prefix that torch.nn.DataParallel and DistributedDataParallel add."""
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ModelPackageError("weights: expected a mapping of parameter names to tensors")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def _keys(kind: str, keys: list[str]) -> str:
    if not keys:
        return f"no {kind} keys"
    shown = ", ".join(keys[:_LISTED])
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return f"{len(keys)} {kind} key(s): {shown}{more}"


def _onnx_load(path: Path, device: torch.device, intra_op_threads: int | None) -> BatchModel:
    import numpy as np  # with onnxruntime, which needs it: only where ONNX models run
    import onnxruntime as ort

    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = int(intra_op_threads)
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        else:
            log.warning("onnxruntime has no CUDA execution provider here; the ONNX model runs on the CPU")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types (InvalidGraph, Fail...)
        raise ModelPackageError(f"weights: not a loadable ONNX model ({str(exc)[:300]})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or not outputs:
        raise ModelPackageError(f"ONNX model: expected one image input, it has {len(inputs)} inputs")
    spec = inputs[0]
    if spec.type not in _ORT_TYPES:
        raise ModelPackageError(f"ONNX model: input {spec.name!r} is {spec.type}, not a float tensor")
    if len(spec.shape) != 4:
        raise ModelPackageError(f"ONNX model: input {spec.name!r} has shape {spec.shape}, not N x C x H x W")
    np_dtype = _ORT_TYPES[spec.type]
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else None
    if fixed is not None:
        log.info("ONNX model has a fixed batch of %d; batches run in chunks of that size", fixed)
    input_name, output_name = spec.name, outputs[0].name

    def infer(array: Any) -> Any:
        return session.run([output_name], {input_name: array})[0]

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).numpy().astype(np_dtype, copy=False)
        if fixed is None:
            out = infer(array)
        else:
            out = np.concatenate(
                [infer(_padded(array[i : i + fixed], fixed)) for i in range(0, len(array), fixed)]
            )
            out = out[: len(array)]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    return BatchModel(run=run, device=torch.device("cpu"), dtype=torch.float32, format="onnx")


def _padded(chunk: Any, size: int) -> Any:
    """`chunk` with zero rows appended up to `size` rows (a fixed-batch graph takes no fewer)."""
    if len(chunk) == size:
        return chunk
    import numpy as np

    pad = np.zeros((size - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
    return np.concatenate([chunk, pad])
