"""CT lung quantification, the reference model: lung volume (mL) and the emphysema index
%LAA-950 (share of lung voxels below -950 HU).

Method (all tensor work in torch, on CUDA when present):
1. Hounsfield units from the stored values: HU = value * RescaleSlope + RescaleIntercept.
2. Air-like voxels: HU < -320 (lung parenchyma sits near -850, soft tissue above -100).
3. Air outside the body: every air voxel connected, within its slice, to the image border. It is
   removed (in-plane only: the lungs legitimately reach the first and last slices).
4. What remains is labelled in 3D (6-connectivity); components of at least 10 % of the largest
   are lung, which drops the trachea, bowel gas and noise specks.
5. Volume = lung voxels x voxel volume (pixel spacing x slice spacing from the positions).

Connected components use run propagation: along each axis in turn every run of foreground voxels
takes the largest label in the run (a cumsum run index and scatter_reduce), repeated until no
label changes. That needs a few passes for convex-ish organs instead of one pass per voxel of
diameter, and it runs the same on CPU and GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydicom.dataset import Dataset

from workers.inference.errors import ModelInputError

NAME, VERSION = "ct-lung-quant", "1.0.0"
AIR_HU = -320.0
LAA_HU = -950.0
KEEP_FRACTION = 0.10
MIN_SLICES = 5


@dataclass(frozen=True)
class Volume:
    hu: torch.Tensor  # [slices, rows, columns], float32
    voxel_ml: float


def volume_from_datasets(datasets: list[Dataset], device: torch.device) -> Volume:
    """Sort the slices along the scan axis and stack them in HU."""
    if len(datasets) < MIN_SLICES:
        raise ModelInputError(f"needs at least {MIN_SLICES} axial CT slices, got {len(datasets)}")
    first = datasets[0]
    try:
        orient = np.array([float(v) for v in first.ImageOrientationPatient], dtype=float)
        normal = np.cross(orient[:3], orient[3:])
        positions = [float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for ds in datasets]
        row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ModelInputError(f"missing or malformed geometry: {exc}") from None
    order = np.argsort(positions)
    spacing = float(np.median(np.diff(np.array(positions)[order]))) if len(order) > 1 else 0.0
    if spacing <= 0:
        raise ModelInputError("slices share one position: not an axial series")
    shape = (int(first.Rows), int(first.Columns))
    hu = torch.empty((len(datasets), *shape), dtype=torch.float32)
    for out_index, i in enumerate(order):
        ds = datasets[int(i)]
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise ModelInputError("slices of different sizes in one series")
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - any decoder failure is an input problem
            raise ModelInputError(f"pixel data cannot be decoded: {type(exc).__name__}") from None
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        hu[out_index] = torch.from_numpy(pixels.astype(np.float32)) * slope + intercept
    return Volume(hu=hu.to(device), voxel_ml=row_mm * col_mm * spacing / 1000.0)


class Runs:
    """The runs of `mask` along one axis: for each voxel (in that axis-last layout) the index of
    its run, or the spare slot `count` for background. Computed once per axis and reused."""

    def __init__(self, mask: torch.Tensor, dim: int) -> None:
        self.dim = dim
        lines = mask.movedim(dim, -1).contiguous()
        self.shape = lines.shape
        lines = lines.reshape(-1, lines.shape[-1])
        start = lines.clone()
        start[:, 1:] &= ~lines[:, :-1]
        index = torch.cumsum(start.reshape(-1), 0) - 1
        self.count = int(index[-1].item()) + 1
        self.index = torch.where(lines.reshape(-1), index, self.count)


def run_max(values: torch.Tensor, runs: Runs) -> torch.Tensor:
    """Each run takes the largest value in it. Background values must be 0 and stay 0."""
    flat = values.movedim(runs.dim, -1).contiguous().reshape(-1)
    best = torch.zeros(runs.count + 1, dtype=values.dtype, device=values.device)
    best.scatter_reduce_(0, runs.index, flat, reduce="amax", include_self=False)
    best[runs.count] = 0
    return best[runs.index].view(runs.shape).movedim(-1, runs.dim)


def propagate(values: torch.Tensor, mask: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Repeat run_max along `dims` until nothing changes: every connected region of `mask` ends up
    holding its largest value (6-connectivity over `dims`). `values` must be 0 off the mask."""
    runs = [Runs(mask, dim) for dim in dims]
    while True:
        before = values
        for r in runs:
            values = run_max(values, r)
        if torch.equal(before, values):
            return values


def components(mask: torch.Tensor) -> torch.Tensor:
    """3D connected-component labels of `mask` (0 = background)."""
    ids = torch.arange(1, mask.numel() + 1, device=mask.device, dtype=torch.int64).view_as(mask)
    return propagate(torch.where(mask, ids, 0), mask, tuple(range(mask.dim())))


def outside_air(air: torch.Tensor) -> torch.Tensor:
    """Air voxels connected within their slice to the slice's border."""
    seed = torch.zeros_like(air, dtype=torch.uint8)
    seed[:, 0, :], seed[:, -1, :], seed[:, :, 0], seed[:, :, -1] = 1, 1, 1, 1
    seed &= air.to(torch.uint8)
    return propagate(seed, air, (1, 2)).bool()


def lung_mask(hu: torch.Tensor) -> torch.Tensor:
    """The lungs: internal air-like regions of lung size (steps 2-4 above)."""
    air = hu < AIR_HU
    inside = air & ~outside_air(air)
    if not inside.any():
        return inside
    nz = inside.nonzero()
    lo, hi = nz.min(0).values, nz.max(0).values + 1
    box = inside[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    labels = components(box)
    ids, counts = labels[box].unique(return_counts=True)
    keep = ids[counts >= KEEP_FRACTION * counts.max()]
    mask = torch.zeros_like(inside)
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = torch.isin(labels, keep) & box
    return mask


class CtLungQuant:
    """The runnable model: datasets in, coded measurements out."""

    name, version = NAME, VERSION

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, datasets: list[Dataset]) -> dict[str, object]:
        with torch.inference_mode():
            volume = volume_from_datasets(datasets, self.device)
            mask = lung_mask(volume.hu)
            lung_voxels = int(mask.sum().item())
            if lung_voxels == 0:
                raise ModelInputError("no lung found (is this a chest CT?)")
            low = int((volume.hu[mask] < LAA_HU).sum().item())
        lung_ml = lung_voxels * volume.voxel_ml
        laa = 100.0 * low / lung_voxels
        return {
            "measurements": [
                {"name": "lung_volume", "value": round(lung_ml, 2)},
                {"name": "laa950", "value": round(laa, 3)},
            ],
            "conclusion": f"Total lung volume {lung_ml:.0f} mL; %LAA-950 {laa:.1f} %.",
        }


CHANGE_NAME, CHANGE_VERSION = "ct-lung-change", "1.0.0"


def _study_day(datasets: list[Dataset]) -> int | None:
    """The de-identified StudyDate as a day number (dates are shifted per patient, so the
    interval between two studies of one patient is the true one)."""
    from datetime import date

    value = str(datasets[0].get("StudyDate", "") or "")
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8])).toordinal()
    except ValueError:
        return None


class CtLungChange(CtLungQuant):
    """Interval change against the prior CT: the reference quantification on the current study and
    on the prior one (fhirai.routing.priors moves it in), and the differences. Without a prior it
    reports the current values and says that nothing was compared."""

    name, version = CHANGE_NAME, CHANGE_VERSION
    reads_priors = True

    def __call__(
        self, datasets: list[Dataset], priors: list[Dataset] | None = None, prior_days: int | None = None
    ) -> dict[str, object]:
        current = super().__call__(datasets)
        measured = {m["name"]: m["value"] for m in current["measurements"]}  # type: ignore[index]
        if not priors:
            current["conclusion"] = f"{current['conclusion']} No prior study to compare with."
            return current
        try:
            before = super().__call__(priors)
        except ModelInputError as exc:
            raise ModelInputError(f"prior study: {exc}") from None
        earlier = {m["name"]: m["value"] for m in before["measurements"]}  # type: ignore[index]
        volume_change = measured["lung_volume"] - earlier["lung_volume"]
        laa_change = measured["laa950"] - earlier["laa950"]
        days = prior_days
        now_day, then_day = _study_day(datasets), _study_day(priors)
        if days is None and now_day is not None and then_day is not None:
            days = now_day - then_day  # a profile that keeps dates shifts both alike
        measurements = list(current["measurements"])  # type: ignore[arg-type]
        measurements += [
            {"name": "lung_volume_prior", "value": earlier["lung_volume"]},
            {"name": "laa950_prior", "value": earlier["laa950"]},
            {"name": "lung_volume_change", "value": round(volume_change, 2)},
            {"name": "laa950_change", "value": round(laa_change, 3)},
        ]
        if days is not None:
            measurements.append({"name": "prior_interval", "value": days})
        since = (
            f" since the prior study {days} days earlier" if days is not None else " since the prior study"
        )
        return {
            "measurements": measurements,
            "conclusion": (
                f"Total lung volume {measured['lung_volume']:.0f} mL ({volume_change:+.0f} mL{since}); "
                f"%LAA-950 {measured['laa950']:.1f} % ({laa_change:+.1f} points)."
            ),
        }
