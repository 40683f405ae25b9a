"""A small convolutional classifier, readable top to bottom (registered as ``small_cnn``).

Three stages of two 3x3 convolutions (each followed by batch norm and ReLU) and a 2x2 max-pool,
the channels doubling per stage; then global average pooling, dropout and one linear layer. On
32x32 digits it trains to about 99% in a few epochs on a CPU.

>>> from raylens.models import create_model
>>> net = create_model("small_cnn", num_classes=10, width=8)
>>> net(net.example_input()).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from raylens.models.classifier_hub import finish_classifier, load_pretrained
from raylens.models.registry import register_model

__all__ = ["SmallCNN", "small_cnn"]


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """conv-conv-pool x 3, global average pool, linear head: ``(N, C, H, W)`` images to ``(N, classes)`` logits."""

    def __init__(self, num_classes: int = 10, *, width: int = 32, in_chans: int = 3, dropout: float = 0.1):
        super().__init__()
        if num_classes < 1 or width < 1 or in_chans < 1:
            raise ValueError(
                f"num_classes, width and in_chans must be positive, got {num_classes}, {width}, {in_chans}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        widths = (width, 2 * width, 4 * width)
        stages, c_in = [], in_chans
        for c_out in widths:
            stages += [_conv_bn_relu(c_in, c_out), _conv_bn_relu(c_out, c_out), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, num_classes)
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x).flatten(1)
        return self.head(self.dropout(x))

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


@register_model("small_cnn", kind="classifier", test_overrides={"num_classes": 3, "width": 4})
def small_cnn(
    num_classes: int = 10,
    width: int = 32,
    in_chans: int = 3,
    dropout: float = 0.1,
    pretrained: str | None = None,
    reset_head: bool = False,
) -> SmallCNN:
    """Our small CNN (3 conv stages, ~0.3M parameters at width 32); ``pretrained``: a raylens checkpoint or .safetensors."""
    model = SmallCNN(num_classes, width=width, in_chans=in_chans, dropout=dropout)
    if pretrained is not None:
        load_pretrained(model, pretrained, reset_head=reset_head)
    return finish_classifier(
        model, "small_cnn", {"num_classes": num_classes, "width": width, "in_chans": in_chans, "dropout": dropout}
    )
