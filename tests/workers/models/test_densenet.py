from __future__ import annotations

import pytest
import torch

from workers.models.densenet import densenet121


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return densenet121().eval()


def test_224_input_gives_one_logit_per_finding(model):
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 14)
    assert torch.isfinite(out).all()


def test_other_heads_and_inputs():
    grey = densenet121(num_classes=3, in_channels=1).eval()
    with torch.inference_mode():
        assert grey(torch.randn(1, 1, 64, 64)).shape == (1, 3)


def test_parameter_count_is_densenet121s():
    """7,978,856 with 1,000 classes: 6,953,856 in the features (about 7.0 M) + 1024 x 1000 + 1000."""
    imagenet = densenet121(num_classes=1000)
    assert _params(imagenet.features) == 6_953_856
    assert _params(imagenet) == 7_978_856
    assert _params(densenet121()) == 6_953_856 + 1024 * 14 + 14


def test_parameter_count_follows_from_the_architecture():
    """The same count from the paper's description, independently of the module tree."""
    growth, width = 32, 4 * 32
    total, channels = 3 * 64 * 7 * 7 + 2 * 64, 64  # stem conv + its BN
    for i, layers in enumerate((6, 12, 24, 16)):
        for _ in range(layers):  # BN, 1x1 conv to 128, BN, 3x3 conv to 32
            total += 2 * channels + channels * width + 2 * width + width * growth * 9
            channels += growth
        if i < 3:  # BN, 1x1 conv halving the channels
            total += 2 * channels + channels * (channels // 2)
            channels //= 2
    total += 2 * channels  # final BN
    assert channels == 1024
    assert _params(densenet121(num_classes=1000)) == total + 1024 * 1000 + 1000


def test_channels_last_gives_the_same_output_and_keeps_the_layout(model):
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        reference = model(x)
        fast = densenet121().eval()
        fast.load_state_dict(model.state_dict())
        fast = fast.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        assert fast.features(x_cl).is_contiguous(memory_format=torch.channels_last)
        out = fast(x_cl)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
