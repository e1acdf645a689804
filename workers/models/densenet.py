"""DenseNet-121 in plain torch (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017),
the usual backbone of chest X-ray classifiers; by default its head has 14 outputs, one per finding.

Structure (the paper's ImageNet variant, DenseNet-BC):
- stem: 7x7 convolution (stride 2) to 64 maps, BN, ReLU, 3x3 max pool (stride 2);
- four dense blocks of 6, 12, 24 and 16 layers. Each layer sees the concatenation of every earlier
  map of its block and adds `growth_rate` (32) new maps: BN-ReLU-Conv1x1 (a bottleneck to
  bn_size x growth = 128 maps) then BN-ReLU-Conv3x3. The pre-activation order (BN and ReLU before
  each convolution) is the paper's: every layer normalises the concatenated input with its own BN;
- between blocks a transition halves the channels (compression 0.5) with BN-ReLU-Conv1x1 and
  halves the resolution with a 2x2 average pool;
- head: BN, ReLU, global average pool, Linear to `num_classes`.

Parameters: 6,953,856 in the feature extractor, plus 1,025 per class in the classifier (7,978,856
with the 1,000 ImageNet classes, 6,968,206 with the 14 findings).

This file imports torch only, so a GPU machine can run the benchmark without the product's
dependencies. Channels-last works end to end (`model.to(memory_format=torch.channels_last)` and
an input in that format): nothing here forces a contiguous layout, and concatenation keeps the
format of its inputs, which is what lets cuDNN's NHWC tensor-core kernels run without transposes.
The concatenation is the plain one (each layer copies the block's maps so far): the memory-saving
shared-buffer variant only matters for training at large batch sizes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseNet", "densenet121"]


class DenseLayer(nn.Module):
    """One layer of a dense block: `in_channels` in, `growth_rate` new maps out."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLU is safe: it overwrites the fresh BN output, which BN's backward does not need.
        x = self.conv1(F.relu(self.norm1(x), inplace=True))
        return self.conv2(F.relu(self.norm2(x), inplace=True))


class DenseBlock(nn.Module):
    """`num_layers` dense layers; the output is the input with every layer's maps appended."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size) for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Transition(nn.Sequential):
    """Between blocks: BN-ReLU-Conv1x1 to `out_channels`, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(in_channels),
                relu=nn.ReLU(inplace=True),
                conv=nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                pool=nn.AvgPool2d(kernel_size=2, stride=2),
            )
        )


class DenseNet(nn.Module):
    """DenseNet-BC; `features` maps an image to its final (normalised, rectified) maps and
    `classifier` turns their spatial mean into logits (no sigmoid: the caller picks the loss or the
    activation, multi-label sigmoid for chest X-ray findings)."""

    def __init__(
        self,
        block_layers: tuple[int, ...] = (6, 12, 24, 16),
        *,
        growth_rate: int = 32,
        bn_size: int = 4,
        compression: float = 0.5,
        init_features: int = 64,
        num_classes: int = 14,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        stages: OrderedDict[str, nn.Module] = OrderedDict(
            stem_conv=nn.Conv2d(in_channels, init_features, kernel_size=7, stride=2, padding=3, bias=False),
            stem_norm=nn.BatchNorm2d(init_features),
            stem_relu=nn.ReLU(inplace=True),
            stem_pool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        channels = init_features
        for i, num_layers in enumerate(block_layers, start=1):
            block = DenseBlock(num_layers, channels, growth_rate, bn_size)
            stages[f"block{i}"] = block
            channels = block.out_channels
            if i < len(block_layers):
                reduced = int(channels * compression)
                stages[f"transition{i}"] = Transition(channels, reduced)
                channels = reduced
        stages["final_norm"] = nn.BatchNorm2d(channels)
        stages["final_relu"] = nn.ReLU(inplace=True)
        self.features = nn.Sequential(stages)
        self.num_features = channels
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He initialisation for the convolutions (ReLU nets, as in the paper), BN as identity and
        a zero classifier bias, so a randomly initialised model (the benchmark's) is well scaled."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(pooled, 1))


def densenet121(num_classes: int = 14, in_channels: int = 3) -> DenseNet:
    """DenseNet-121: growth 32, blocks of 6/12/24/16 layers, bottleneck 4x, compression 0.5, a
    64-map stem. Randomly initialised; 224 x 224 inputs give 7 x 7 final maps."""
    return DenseNet(
        (6, 12, 24, 16),
        growth_rate=32,
        bn_size=4,
        compression=0.5,
        init_features=64,
        num_classes=num_classes,
        in_channels=in_channels,
    )
