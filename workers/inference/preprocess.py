"""One DICOM image -> the C x H x W float32 tensor a classifier was trained on, as its manifest's
`input` describes. The steps follow the DICOM grayscale pipeline (PS3.3 C.11, PS3.4 N.2), so a
model sees an image the way a reader would, whatever the modality's stored values mean:

1. decode the pixel data (pydicom: native, RLE, the JPEG family); a multi-frame image gives its
   first frame; colour (RGB, or YBR which pydicom converts to RGB) becomes grey by luminance
   (ITU-R BT.601 weights); anything else (palette colour, a stack of unequal planes) is refused;
2. Modality LUT: RescaleSlope/RescaleIntercept (or a Modality LUT Sequence) to modality units;
3. VOI: the manifest's `window` {center, width} in those units (the model was trained with it),
   else the image's own first WindowCenter/WindowWidth with its VOI LUT Function (LINEAR,
   LINEAR_EXACT, SIGMOID; PS3.3 C.11.2.1.2), else the image's min-max: scaled to [0, 1], clipped.
   A VOI LUT Sequence is not applied (min-max instead): it is rare on projection radiographs;
4. MONOCHROME1 is inverted so that, as in MONOCHROME2, bright means dense;
5. letterbox (manifest `letterbox: true`): pad to a square with 0 (black, the background of a
   radiograph) so the aspect ratio survives the resize; otherwise the image is stretched;
6. resize to `size` [rows, columns], bilinear with antialiasing (downscaling a 3000-pixel
   radiograph without it aliases fine lines such as tubes and fracture edges);
7. grey replicated to 3 channels when `channels` is 3 (ImageNet-pretrained backbones);
8. normalise per channel with `mean` and `std`.

Every failure is a ModelInputError whose message names the problem, never a header value.
Uses numpy, pydicom and torch only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from workers.inference.errors import ModelInputError

__all__ = ["InputSpec", "image_preprocess", "input_spec", "is_image"]

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of DICOM's own YBR_FULL


@dataclass(frozen=True)
class InputSpec:
    """A manifest's `input`, checked once when the model loads rather than per image."""

    size: tuple[int, int]
    channels: int
    window: tuple[float, float] | None  # (center, width) in modality units
    mean: tuple[float, ...]
    std: tuple[float, ...]
    letterbox: bool = False


def input_spec(spec: dict[str, Any]) -> InputSpec:
    """Check a manifest's `input` (ValueError naming the field) and fill in the defaults."""
    size = spec.get("size", [224, 224])
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError("input.size: [rows, columns] of positive integers")
    channels = int(spec.get("channels", 1))
    if channels not in (1, 3):
        raise ValueError("input.channels: 1 or 3")
    window = None
    if spec.get("window") is not None:
        try:
            center, width = float(spec["window"]["center"]), float(spec["window"]["width"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("input.window: {center, width} numbers") from None
        if width <= 0:
            raise ValueError("input.window.width: must be positive")
        window = (center, width)
    mean = tuple(float(v) for v in spec.get("mean", [0.0]))
    std = tuple(float(v) for v in spec.get("std", [1.0]))
    for key, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise ValueError(f"input.{key}: one value or one per channel")
    if any(v <= 0 for v in std):
        raise ValueError("input.std: must be positive")
    return InputSpec(
        size=(int(size[0]), int(size[1])),
        channels=channels,
        window=window,
        mean=mean,
        std=std,
        letterbox=bool(spec.get("letterbox", False)),
    )


def is_image(ds: Dataset) -> bool:
    """Whether the instance carries pixels at all (SRs, presentation states and the like do not)."""
    return any(keyword in ds for keyword in PIXEL_KEYWORDS)


def image_preprocess(ds: Dataset, spec: InputSpec) -> torch.Tensor:
    """The model input for one image: spec.channels x rows x columns, float32."""
    grey = _grey_frame(ds)
    values = _modality(grey, ds)
    image = _voi(values, ds, spec.window)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        image = 1.0 - image
    if spec.letterbox:
        image = _letterbox(image)
    image = _resize(image, spec.size)
    if spec.channels == 3:
        image = image.expand(3, -1, -1)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    return ((image - mean) / std).contiguous()


def _grey_frame(ds: Dataset) -> np.ndarray:
    """The first frame's pixels as a rows x columns array of stored values."""
    if not is_image(ds):
        raise ModelInputError("the instance has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":
        raise ModelInputError("palette colour images are not supported: a classifier needs greyscale")
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is an input problem
        raise ModelInputError(f"pixel data cannot be decoded ({type(exc).__name__})") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and pixels.ndim == (4 if samples > 1 else 3):
        pixels = pixels[0]
    if samples == 3 and pixels.ndim == 3 and pixels.shape[-1] == 3:
        return pixels.astype(np.float32) @ np.asarray(LUMINANCE, dtype=np.float32)
    if samples != 1 or pixels.ndim != 2:
        raise ModelInputError(
            f"not a 2-D greyscale image ({samples} samples per pixel, array shape {pixels.shape})"
        )
    if min(pixels.shape) < 2:
        raise ModelInputError(f"image of {pixels.shape[0]} x {pixels.shape[1]} pixels is too small")
    return pixels


def _modality(pixels: np.ndarray, ds: Dataset) -> torch.Tensor:
    """Stored values -> modality units (PS3.3 C.11.1), as float32. Colour has no Modality LUT."""
    grey = int(ds.get("SamplesPerPixel", 1) or 1) == 1
    lut = grey and bool(ds.get("ModalityLUTSequence"))
    if lut:
        pixels = apply_modality_lut(pixels, ds)
    # np.array copies: the tensor owns writable memory, whatever the decoder handed back.
    values = torch.from_numpy(np.array(pixels, dtype=np.float32))
    if grey and not lut:
        slope, intercept = _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0)
        if slope != 1.0 or intercept != 0.0:
            values = values * slope + intercept
    return torch.nan_to_num(values)


def _voi(values: torch.Tensor, ds: Dataset, window: tuple[float, float] | None) -> torch.Tensor:
    """Modality values -> [0, 1] through the manifest's window, the image's, or its min-max."""
    if window is not None:
        center, width = window
        return ((values - center) / width + 0.5).clamp_(0.0, 1.0)
    own = _own_window(ds)
    if own is not None:
        center, width, function = own
        if function == "SIGMOID":  # PS3.3 C.11.2.1.3.1
            return torch.sigmoid(4.0 * (values - center) / width)
        if function == "LINEAR_EXACT" or width <= 1.0:  # PS3.3 C.11.2.1.3.2
            return ((values - center) / width + 0.5).clamp_(0.0, 1.0)
        return ((values - (center - 0.5)) / (width - 1.0) + 0.5).clamp_(0.0, 1.0)  # C.11.2.1.2.1
    low, high = values.min(), values.max()
    if high <= low:
        return torch.zeros_like(values)
    return (values - low) / (high - low)


def _own_window(ds: Dataset) -> tuple[float, float, str] | None:
    """The image's first VOI window and its function, if it has a usable one."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return center, width, function


def _first(value: Any) -> float | None:
    """The first of a possibly multi-valued number (WindowCenter may hold several presets)."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__getitem__"):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _number(ds: Dataset, keyword: str, default: float) -> float:
    value = _first(ds.get(keyword))
    return default if value is None else value


def _letterbox(image: torch.Tensor) -> torch.Tensor:
    """Pad a rows x columns image with 0 to a centred square."""
    rows, columns = image.shape
    side = max(rows, columns)
    top, left = (side - rows) // 2, (side - columns) // 2
    return F.pad(image, (left, side - columns - left, top, side - rows - top), value=0.0)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """rows x columns -> 1 x size, bilinear with antialiasing."""
    batch = image[None, None]
    if tuple(image.shape) != size:
        batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
    return batch[0]
