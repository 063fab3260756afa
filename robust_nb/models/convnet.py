"""The all-convolutional ConvNet of the course: small, fast, and accurate on digits.

Layout (``filters = (f1, f2, f3, f4)``, defaults 64, 128, 256, 512; every conv is 3x3, padding 1,
followed by BatchNorm and LeakyReLU(0.2))::

    Normalize -> conv(C_in, f1) -> conv(f1, f2) -> avg-pool 2
              -> conv(f2, f3) [reg] -> avg-pool 2
              -> conv(f3, f4) [reg] -> avg-pool 2
              -> conv(f4, classes) -> global average pool -> logits

There is no fully-connected layer (Springenberg et al. 2015, "Striving for Simplicity: The All
Convolutional Net", https://arxiv.org/abs/1412.6806, use a last conv to the classes followed by
global average pooling). BatchNorm after each hidden conv is our choice, for quick, stable
training at a high learning rate. ``[reg]`` marks the regularization points: Dropout or
DropBlock after the last two stages, where Ghiasi et al. 2018 put DropBlock in ResNets.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .layers import Normalize, regularizer


def _conv_bn_act(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.2, inplace=True))


class ConvNet(nn.Module):
    """All-convolutional network with four 3x3 stages, LeakyReLU(0.2) and global average pooling.

    Submodules ``stage1`` ... ``stage3`` and ``head`` are named so that feature maps can be read
    with forward hooks (notebooks 01 and 02 do).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, *,
                 filters: Sequence[int] = (64, 128, 256, 512), mean=None, std=None,
                 regularization: str | None = None, drop_prob: float = 0.1, block_size: int = 3):
        super().__init__()
        filters = tuple(int(f) for f in filters)
        if len(filters) != 4 or min(filters) < 1:
            raise ValueError(f"ConvNet needs 4 positive filter counts (f1, f2, f3, f4), got {filters}")
        f1, f2, f3, f4 = filters
        mean = (0.5,) * in_channels if mean is None else mean
        std = (0.5,) * in_channels if std is None else std
        self.normalize = Normalize(mean, std)
        self.stage1 = nn.Sequential(_conv_bn_act(in_channels, f1), _conv_bn_act(f1, f2))
        self.pool1 = nn.AvgPool2d(2)
        self.stage2 = nn.Sequential(_conv_bn_act(f2, f3), regularizer(regularization, drop_prob, block_size))
        self.pool2 = nn.AvgPool2d(2)
        self.stage3 = nn.Sequential(_conv_bn_act(f3, f4), regularizer(regularization, drop_prob, block_size))
        self.pool3 = nn.AvgPool2d(2)
        self.head = nn.Conv2d(f4, num_classes, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(x)                       # (B, C_in, H, W)
        x = self.pool1(self.stage1(x))              # (B, f2, H/2, W/2)
        x = self.pool2(self.stage2(x))              # (B, f3, H/4, W/4)
        x = self.pool3(self.stage3(x))              # (B, f4, H/8, W/8)
        return self.pool(self.head(x)).flatten(1)   # (B, classes)
