"""The residual networks of the course, in one generic :class:`ResNet`.

* ResNet-18/34/50 (v1, post-activation): He, Zhang, Ren & Sun, "Deep Residual Learning for Image
  Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385. CIFAR variant as in the adversarial-
  robustness literature (kuangliu/pytorch-cifar): a 3x3 stem without max-pool, four stages of
  64/128/256/512 channels with strides 1/2/2/2, projection shortcuts (1x1 conv + BN) where the
  shape changes. The bottleneck puts its stride on the 3x3 conv ("ResNet v1.5"), as torchvision.
* PreAct-ResNet-18: He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV
  2016, https://arxiv.org/abs/1603.05027: BN-ReLU before each conv, a final BN-ReLU before the
  pooling (as in locuslab/fast_adversarial's ``PreActResNet18``), 1x1-conv projection shortcuts
  taken from the pre-activated input.
* Wide ResNets WRN-d-k: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016,
  https://arxiv.org/abs/1605.07146: a 16-channel stem, three stages of (d-4)/6 pre-activation
  blocks of 16k/32k/64k channels (strides 1/2/2), final BN-ReLU; the parameter count of WRN-28-10
  (36,479,194) and WRN-34-10 (46,160,474) match the TRADES code. Deviation: the WRN paper's
  optional dropout *between* the two convs of a block is not used; ``regularization`` applies
  at the same points as for every other model (below).
* SE-ResNet-18: ResNet-18 whose blocks rescale their residual branch with squeeze-and-excitation
  (reduction 16) before the addition, Hu et al. 2018, https://arxiv.org/abs/1709.01507, Fig. 3.

``width`` multiplies every channel count (rounded, at least 1), so the quick profile trains
small versions of every architecture. ``stem="imagenet"`` swaps the CIFAR stem for the 7x7/2 conv
+ 3x3/2 max-pool stem of 224-pixel ImageNet models. ``residual=False`` removes every shortcut
(a "plain" network of the same depth, for the gradient-flow comparison of notebook 01).

Regularization (``"dropout"`` / ``"dropblock"``) is applied to the outputs of the last two stages,
as Ghiasi et al. 2018 (https://arxiv.org/abs/1810.12890) apply DropBlock to groups 3 and 4 of
ResNet-50. (Their TensorFlow code also applies it inside every block of those groups and on the
shortcut; we keep the simpler placement the issue asks for.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Normalize, SqueezeExcitation, regularizer


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


def _shortcut(cin: int, cout: int, stride: int, residual: bool) -> nn.Module:
    """Identity, or a strided 1x1 conv + BN where the block changes the shape (He et al. 2016,
    option B); an empty ``Sequential`` (identity) also in plain, shortcut-free blocks."""
    if residual and (stride != 1 or cin != cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    return nn.Sequential()


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+SE) plus a shortcut, then ReLU (He et al. 2016, Fig. 2)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, *, residual: bool = True,
                 se_reduction: int | None = None):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcitation(cout, se_reduction) if se_reduction else nn.Identity()
        self.residual = residual
        self.shortcut = _shortcut(cin, cout, stride, residual)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck with 4x expansion (He et al. 2016, Fig. 5), stride on the 3x3."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, *, residual: bool = True,
                 se_reduction: int | None = None):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcitation(cout, se_reduction) if se_reduction else nn.Identity()
        self.residual = residual
        self.shortcut = _shortcut(cin, cout, stride, residual)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus an identity (He et al. ECCV 2016, Fig. 4e).

    Also the block of Wide ResNets. Where the shape changes, the shortcut is a 1x1 conv of the
    pre-activated input (no BN), as in both papers' code.
    """

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, *, residual: bool = True,
                 se_reduction: int | None = None):
        super().__init__()
        cout = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
        self.se = SqueezeExcitation(cout, se_reduction) if se_reduction else nn.Identity()
        self.residual = residual
        self.shortcut = None
        if residual and (stride != 1 or cin != cout):
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.se(self.conv2(F.relu(self.bn2(out))))
        if not self.residual:
            return out
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "preact": PreActBlock}


class ResNet(nn.Module):
    """A residual network: Normalize, stem, stages of blocks, (final BN-ReLU), pool, linear.

    Args:
        block: ``"basic"``, ``"bottleneck"`` or ``"preact"``.
        num_blocks: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        widths: channels ("planes") per stage before ``width`` scaling, e.g. (64, 128, 256, 512).
        stem_channels: output channels of the stem conv (64 for ResNets, 16 for WRNs).
        strides: stride of each stage's first block; default 1, then 2 for every later stage.
        final_bn: a BN-ReLU before pooling (pre-activation networks need it).
        stem_bn: BN-ReLU after the stem conv (v1 ResNets; the ImageNet stem always has it).
        se_reduction: squeeze-and-excitation reduction in every block, or None.

    Submodules ``stem``, ``stages`` (an ``nn.ModuleList``), ``regs`` (regularization after each
    stage, Identity where none) and ``fc`` are named for forward hooks.
    """

    def __init__(self, block: str, num_blocks: Sequence[int], widths: Sequence[int], *,
                 num_classes: int = 10, in_channels: int = 3, stem_channels: int = 64,
                 strides: Sequence[int] | None = None, width: float = 1.0, stem: str = "cifar",
                 stem_bn: bool = True, final_bn: bool = False, se_reduction: int | None = None,
                 residual: bool = True, mean=None, std=None, regularization: str | None = None,
                 drop_prob: float = 0.1, block_size: int = 3):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose one of {tuple(BLOCKS)}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"unknown stem {stem!r}; choose 'cifar' (small images) or 'imagenet'")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if len(num_blocks) != len(widths) or min(num_blocks) < 1:
            raise ValueError(f"need one positive block count per stage, got {num_blocks} for {widths}")
        block_cls = BLOCKS[block]
        strides = tuple(strides) if strides is not None else (1,) + (2,) * (len(widths) - 1)
        mean = (0.5,) * in_channels if mean is None else mean
        std = (0.5,) * in_channels if std is None else std

        self.normalize = Normalize(mean, std)
        c = scaled(stem_channels, width)
        if stem == "cifar":
            layers = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)]
            if stem_bn:
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        else:
            layers = [nn.Conv2d(in_channels, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c),
                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        self.stem = nn.Sequential(*layers)

        stages = []
        for n, planes, stride in zip(num_blocks, widths, strides):
            planes = scaled(planes, width)
            blocks = []
            for i in range(n):
                blocks.append(block_cls(c, planes, stride if i == 0 else 1, residual=residual,
                                        se_reduction=se_reduction))
                c = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        # Regularization after the last two stages (Ghiasi et al. 2018: groups 3 and 4).
        n_reg = min(2, len(stages))
        self.regs = nn.ModuleList(
            [nn.Identity() for _ in range(len(stages) - n_reg)]
            + [regularizer(regularization, drop_prob, block_size) for _ in range(n_reg)])
        self.final = (nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True)) if final_bn
                      else nn.Identity())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

        # He et al. 2015 initialisation for convs (as torchvision's ResNets); BN weight 1, bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(self.normalize(x))                  # (B, c0, H, W) (H/4 for the ImageNet stem)
        for stage, reg in zip(self.stages, self.regs):
            x = reg(stage(x))                             # (B, c_i, H_i, W_i)
        x = self.pool(self.final(x)).flatten(1)           # (B, c_last)
        return self.fc(x)                                 # (B, classes)


def resnet(depth: int, **kw) -> ResNet:
    """ResNet-18/34/50/101/152 (He et al. 2016, Table 1)."""
    table = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
             50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
             152: ("bottleneck", (3, 8, 36, 3))}
    if depth not in table:
        raise ValueError(f"no ResNet-{depth}; choose one of {sorted(table)}")
    block, blocks = table[depth]
    return ResNet(block, blocks, (64, 128, 256, 512), **kw)


def preact_resnet(depth: int, **kw) -> ResNet:
    """Pre-activation ResNet-18/34 with the final BN-ReLU (He et al. ECCV 2016)."""
    table = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
    if depth not in table:
        raise ValueError(f"no PreAct-ResNet-{depth}; choose one of {sorted(table)}")
    return ResNet("preact", table[depth], (64, 128, 256, 512), stem_bn=False, final_bn=True, **kw)


def wide_resnet(depth: int, k: int, **kw) -> ResNet:
    """WRN-depth-k (Zagoruyko & Komodakis 2016): (depth-4)/6 pre-activation blocks per stage."""
    if depth < 10 or (depth - 4) % 6 != 0 or k < 1:
        raise ValueError(f"WRN-{depth}-{k}: depth must be 6n+4 (10, 16, 22, 28, 34, 40, ...) "
                         f"and the widening factor k a positive integer")
    n = (depth - 4) // 6
    return ResNet("preact", (n, n, n), (16 * k, 32 * k, 64 * k), stem_channels=16,
                  stem_bn=False, final_bn=True, **kw)


def se_resnet(depth: int, reduction: int = 16, **kw) -> ResNet:
    """SE-ResNet-18/34/50 (Hu et al. 2018): ResNet with squeeze-and-excitation in every block."""
    table = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
             50: ("bottleneck", (3, 4, 6, 3))}
    if depth not in table:
        raise ValueError(f"no SE-ResNet-{depth}; choose one of {sorted(table)}")
    block, blocks = table[depth]
    return ResNet(block, blocks, (64, 128, 256, 512), se_reduction=reduction, **kw)
