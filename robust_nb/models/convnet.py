"""The all-convolutional ConvNet of the course, as the self-study course on adversarial robustness
builds it: 3x3 convolutions, an average-pool after every other one, a 1x1 convolution to the
classes and global average pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .layers import Normalize, regularizer


def _conv_act(cin: int, cout: int, batchnorm: bool) -> nn.Sequential:
    # With BatchNorm the conv's bias is redundant (BN subtracts the mean), so it is dropped.
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def convnet_widths(filters: int | Sequence[int]) -> tuple[int, int, int, int]:
    """The four widths ``(f1, f2, f3, f4)`` of the ConvNet for ``filters`` (see :class:`ConvNet`).

    An int ``f`` is the base width of the self-study course's code: ``(f, 2f, 4f, 8f)``.
    """
    if isinstance(filters, bool):
        raise ValueError(f"filters must be an int or 4 ints, got {filters!r}")
    if isinstance(filters, int):
        widths = (filters, 2 * filters, 4 * filters, 8 * filters)
    else:
        widths = tuple(filters)
        if len(widths) != 4 or any(isinstance(f, bool) or int(f) != f for f in widths):
            raise ValueError(f"ConvNet needs 4 positive filter counts (f1, f2, f3, f4) or one "
                             f"base width f, got {filters!r}")
        widths = tuple(int(f) for f in widths)
    if min(widths) < 1:
        raise ValueError(f"ConvNet needs 4 positive filter counts (f1, f2, f3, f4) or one "
                         f"positive base width f, got {filters!r}")
    return widths


class ConvNet(nn.Module):
    """All-convolutional network: three stages of two 3x3 convs, each stage closed by a 2x2
    average-pool, then a 1x1 conv to the classes and global average pooling; LeakyReLU(0.2).

    Layout, for widths ``(f1, f2, f3, f4)`` (``filters=64``: 64, 128, 256, 512); every 3x3 conv
    has padding 1 and is followed by LeakyReLU(0.2) (by BatchNorm, then LeakyReLU, when
    ``batchnorm=True``)::

        normalize  Normalize(mean, std)
        stage1     conv3x3(C_in, f1) -> conv3x3(f1, f2)              (B, f2, H, W)
        pool1      avg-pool 2x2                                      (B, f2, H/2, W/2)
        stage2     conv3x3(f2, f2) -> conv3x3(f2, f3) -> [reg]       (B, f3, H/2, W/2)
        pool2      avg-pool 2x2                                      (B, f3, H/4, W/4)
        stage3     conv3x3(f3, f3) -> conv3x3(f3, f4) -> [reg]       (B, f4, H/4, W/4)
        pool3      avg-pool 2x2                                      (B, f4, H/8, W/8)
        head       conv1x1(f4, classes)                              (B, classes, H/8, W/8)
        pool       global average pool                               (B, classes, 1, 1) -> logits

    Pools floor odd sizes (28 -> 14 -> 7 -> 3). ``[reg]`` marks the regularization points:
    Identity, Dropout or DropBlock after the last two stages, where Ghiasi et al. 2018 put
    DropBlock in ResNets. The named submodules (``stage1`` ... ``stage3``, ``pool1`` ... ``pool3``,
    ``head``, ``pool``) are where forward hooks read feature maps (notebooks 01 and 02 do).

    Source: the baseline model of the "Self-study course in evaluating adversarial robustness"
    (https://github.com/google-research/selfstudy-adversarial-robustness: ``AllConvModel`` in
    ``common/networks.py`` and its PyTorch port ``common/pytorch_nets.py``; its training README:
    "entirely 3x3 convolutions followed by average pooling every other layer ... a 1x1
    convolution that gives ten channels out, and then a final global average pool"), an
    all-convolutional net in the sense of Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving
    for Simplicity: The All Convolutional Net", ICLR workshop 2015,
    https://arxiv.org/abs/1412.6806 (no fully-connected layer: a conv to the classes, then
    global average pooling). Per stage the widths go ``f << s`` then ``f << (s + 1)``, as in
    the course's code.

    Deviations from the course's code:

    * the last conv is 1x1, as the README says; the released code uses a 3x3 conv there;
    * the model returns logits (the code ends with a softmax that its training loop strips);
    * a :class:`Normalize` first layer holds the dataset's mean/std (the course feeds
      pre-scaled images), so attacks and eps live in pixel space of [0, 1] images;
    * three stages always (the code uses ``round(log2(H)) - 2`` of them: 3 for 28- and
      32-pixel images alike), and the four widths can be set one by one;
    * optional BatchNorm (off by default: the course's model has none) and optional
      Dropout/DropBlock at the regularization points (not in the course's model);
    * He et al. 2015 initialisation (https://arxiv.org/abs/1502.01852: normal, fan-in, gain for
      LeakyReLU(0.2); the 1x1 head with gain 1; zero biases) instead of Keras's Glorot-uniform
      (the course trains in TensorFlow; its PyTorch port only loads converted weights). Without
      BatchNorm the quick profile's 4-epoch recipe (f=8, lr 0.05, seed 0) ends at 10.0% test
      accuracy from PyTorch's default init and at 81.3% from Glorot's, at 94.5% from He's.

    Args:
        num_classes: output classes (channels of the 1x1 head).
        in_channels: image channels (1 for digits, 3 for colour images).
        filters: the base width ``f`` (the course's ``num_filters``; widths ``f, 2f, 4f, 8f``;
            default 64, the CIFAR-10 size: 2,293,770 parameters), or the four widths
            ``(f1, f2, f3, f4)`` themselves, where stage ``k`` convolves to ``f_k`` and then to
            ``f_(k+1)`` (``64`` is ``(64, 128, 256, 512)``).
        mean, std: per-channel statistics of the :class:`Normalize` first layer (default 0.5).
        regularization: None, ``"dropout"`` or ``"dropblock"`` at the two regularization points.
        drop_prob: Dropout / DropBlock drop probability.
        block_size: DropBlock block size.
        batchnorm: BatchNorm after every hidden conv (whose bias is then dropped); off by
            default, as in the course.

    >>> import torch
    >>> model = ConvNet(10, 3)                                   # the course's CIFAR-10 model
    >>> model(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> small = ConvNet(10, 1, filters=(8, 16, 32, 64), regularization="dropblock")
    >>> [tuple(c.weight.shape[:2]) for c in small.modules() if isinstance(c, nn.Conv2d)]
    [(8, 1), (16, 8), (16, 16), (32, 16), (32, 32), (64, 32), (10, 64)]
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, *,
                 filters: int | Sequence[int] = 64, mean=None, std=None,
                 regularization: str | None = None, drop_prob: float = 0.1, block_size: int = 3,
                 batchnorm: bool = False):
        super().__init__()
        f1, f2, f3, f4 = convnet_widths(filters)
        self.widths = (f1, f2, f3, f4)
        self.batchnorm = bool(batchnorm)
        mean = (0.5,) * in_channels if mean is None else mean
        std = (0.5,) * in_channels if std is None else std
        bn = self.batchnorm
        self.normalize = Normalize(mean, std)
        self.stage1 = nn.Sequential(_conv_act(in_channels, f1, bn), _conv_act(f1, f2, bn))
        self.pool1 = nn.AvgPool2d(2)
        self.stage2 = nn.Sequential(_conv_act(f2, f2, bn), _conv_act(f2, f3, bn),
                                    regularizer(regularization, drop_prob, block_size))
        self.pool2 = nn.AvgPool2d(2)
        self.stage3 = nn.Sequential(_conv_act(f3, f3, bn), _conv_act(f3, f4, bn),
                                    regularizer(regularization, drop_prob, block_size))
        self.pool3 = nn.AvgPool2d(2)
        self.head = nn.Conv2d(f4, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He et al. 2015 initialisation for LeakyReLU(0.2); the 1x1 head with gain 1; zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                linear = m is self.head
                nn.init.kaiming_normal_(m.weight, a=0.0 if linear else 0.2,
                                        nonlinearity="linear" if linear else "leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(x)                       # (B, C_in, H, W)
        x = self.pool1(self.stage1(x))              # (B, f2, H/2, W/2)
        x = self.pool2(self.stage2(x))              # (B, f3, H/4, W/4)
        x = self.pool3(self.stage3(x))              # (B, f4, H/8, W/8)
        return self.pool(self.head(x)).flatten(1)   # (B, classes)

    def extra_repr(self) -> str:
        return f"widths={self.widths}, batchnorm={self.batchnorm}"
