from __future__ import annotations

from io import BytesIO

import pytest
import torch
from pydicom import dcmread

from tests.support.phantom import ct_phantom
from workers.inference.errors import ModelInputError
from workers.models.ct_lung import CtLungQuant, components

CPU = torch.device("cpu")


def _measure(files: list[bytes]) -> dict[str, float]:
    out = CtLungQuant(CPU)([dcmread(BytesIO(f)) for f in files])
    return {m["name"]: m["value"] for m in out["measurements"]}


@pytest.mark.parametrize(("emphysema", "noise", "seed"), [(0.0, 10.0, 3), (0.12, 15.0, 1), (0.3, 20.0, 5)])
def test_lung_volume_and_laa950_match_the_phantom(emphysema, noise, seed):
    ph = ct_phantom(slices=20, size=96, emphysema=emphysema, noise=noise, seed=seed)
    got = _measure(ph.files)
    assert got["lung_volume"] == pytest.approx(ph.lung_volume_ml, rel=0.02)
    assert got["laa950"] == pytest.approx(ph.laa950_pct, abs=0.5)


def test_slice_order_does_not_matter(phantom):
    assert _measure(list(reversed(phantom.files))) == _measure(phantom.files)


def test_too_few_slices_is_an_input_error(phantom):
    with pytest.raises(ModelInputError):
        _measure(phantom.files[:2])


def test_components_separate_regions_and_join_touching_voxels():
    mask = torch.zeros((3, 5, 5), dtype=torch.bool)
    mask[0, 0:2, 0:2] = True
    mask[1, 1, 1] = True  # touches the first region across slices
    mask[2, 4, 4] = True  # a region of its own
    labels = components(mask)
    assert labels[0, 0, 0] == labels[1, 1, 1] != labels[2, 4, 4]
    assert labels[~mask].eq(0).all() and len(labels[mask].unique()) == 2
