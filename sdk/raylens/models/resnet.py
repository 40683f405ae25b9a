"""A ResNet of basic blocks for small images, readable top to bottom (registered as ``small_resnet``).

He et al.'s CIFAR ResNet: a 3x3 stem, then three stages of basic blocks (two 3x3 convolutions with
batch norm, added to a shortcut) at ``width``, ``2 * width`` and ``4 * width`` channels, the last two
stages halving the resolution; global average pooling and a linear head. ``depths=(2, 2, 2)`` is a
ResNet-14 (``6n + 2`` layers with ``n = 2``).

>>> from raylens.models import create_model
>>> net = create_model("small_resnet", num_classes=10, width=4, depths=(1, 1, 1))
>>> net(net.example_input()).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raylens.models.classifier_hub import finish_classifier, load_pretrained
from raylens.models.registry import register_model

__all__ = ["BasicBlock", "SmallResNet", "small_resnet"]


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; the shortcut is a 1x1 conv when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem, three stages of :class:`BasicBlock`, global average pool, linear head."""

    def __init__(self, num_classes: int = 10, *, depths: Sequence[int] = (2, 2, 2), width: int = 16, in_chans: int = 3):
        super().__init__()
        depths = tuple(int(d) for d in depths)
        if len(depths) != 3 or min(depths) < 1:
            raise ValueError(f"depths must be three positive block counts, one per stage, got {depths}")
        if num_classes < 1 or width < 1 or in_chans < 1:
            raise ValueError(
                f"num_classes, width and in_chans must be positive, got {num_classes}, {width}, {in_chans}"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages, c_in = [], width
        for i, n_blocks in enumerate(depths):
            c_out = width * 2**i
            blocks = [BasicBlock(c_in, c_out, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(c_out, c_out) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)
        self.in_chans = in_chans
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.pool(x).flatten(1))

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_head(self, num_classes: int) -> None:
        """A new, freshly initialised head of ``num_classes`` outputs."""
        self.head = nn.Linear(self.head.in_features, num_classes).to(self.head.weight.device)

    def example_input(self, n: int = 2) -> torch.Tensor:
        return torch.rand(n, self.in_chans, 32, 32, generator=torch.Generator().manual_seed(0))


@register_model("small_resnet", kind="classifier", test_overrides={"num_classes": 3, "width": 4, "depths": (1, 1, 1)})
def small_resnet(
    num_classes: int = 10,
    depths: Sequence[int] = (2, 2, 2),
    width: int = 16,
    in_chans: int = 3,
    pretrained: str | None = None,
    reset_head: bool = False,
) -> SmallResNet:
    """Our ResNet of basic blocks (ResNet-14 for small images, ~0.2M parameters at width 16); ``pretrained``: a raylens checkpoint."""
    model = SmallResNet(num_classes, depths=depths, width=width, in_chans=in_chans)
    if pretrained is not None:
        load_pretrained(model, pretrained, reset_head=reset_head)
    return finish_classifier(
        model,
        "small_resnet",
        {"num_classes": num_classes, "depths": list(depths), "width": width, "in_chans": in_chans},
    )
