"""Building blocks shared by every architecture: ``Normalize``, DropBlock and squeeze-and-excitation.

* :class:`Normalize` is the first layer of every model of the course, so models take images in
  [0, 1] and attacks (and their eps) live in pixel space.
* :func:`drop_block2d` / :class:`DropBlock2d` / :class:`DropBlockSchedule`: DropBlock, Ghiasi,
  Lin & Le, "DropBlock: A regularization method for convolutional networks", NeurIPS 2018,
  https://arxiv.org/abs/1810.12890 (Algorithm 1 and the linear keep_prob schedule of Sec. 3).
* :class:`SqueezeExcitation`: Hu, Shen & Sun, "Squeeze-and-Excitation Networks", CVPR 2018,
  https://arxiv.org/abs/1709.01507.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean and std stored as buffers (not parameters).

    Putting normalisation inside the model keeps every input, attack and eps in pixel units of
    images in [0, 1]. The buffers travel with ``.to(device)`` and ``state_dict()``.

    >>> norm = Normalize((0.1307,), (0.3081,))
    >>> norm(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 1, 28, 28])
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        # Validate as Python floats (works under a meta/cuda default device too).
        mean = [float(v) for v in torch.as_tensor(mean, device="cpu").flatten().tolist()]
        std = [float(v) for v in torch.as_tensor(std, device="cpu").flatten().tolist()]
        if not mean or len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel and the same length, "
                             f"got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))  # (1, C, 1, 1)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))    # (1, C, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"Normalize expects (N, {self.mean.shape[1]}, H, W) images, "
                             f"got shape {tuple(x.shape)}")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = ", ".join(f"{v:.4g}" for v in self.mean.flatten().tolist())
        std = ", ".join(f"{v:.4g}" for v in self.std.flatten().tolist())
        return f"mean=({mean}), std=({std})"


# --------------------------------------------------------------------------------------------
# DropBlock
# --------------------------------------------------------------------------------------------

def dropblock_gamma(drop_prob: float, block_size: int, height: int, width: int) -> float:
    """The seed-drop rate gamma of Ghiasi et al. 2018, Eq. (1), for an ``height x width`` map.

    gamma = drop_prob / block_size**2 * (H * W) / ((H - block_size + 1) * (W - block_size + 1));
    the paper writes it for square maps (``feat_size``); this is its rectangular form (the same
    one ``torchvision.ops.drop_block2d`` uses). ``block_size`` is clamped to the map first.
    """
    block_size = min(block_size, height, width)
    valid = (height - block_size + 1) * (width - block_size + 1)
    return min(1.0, drop_prob / block_size**2 * (height * width) / valid)


def dropblock_drop_rate(drop_prob: float, block_size: int, height: int, width: int) -> float:
    """The expected fraction of units DropBlock drops on an ``height x width`` map (exact).

    Unit (i, j) is covered by ``n(i, j) = r(i) * c(j)`` in-map blocks (r, c: how many anchor rows
    / columns reach it), each seeded independently with probability gamma, so it is dropped with
    probability ``1 - (1 - gamma) ** n(i, j)``. Overlapping blocks and the border make this
    lower than ``drop_prob``; the paper's gamma is the first-order approximation that ignores them.
    """
    k = min(block_size, height, width)
    gamma = dropblock_gamma(drop_prob, k, height, width)

    def reach(i: int, n: int) -> int:                  # anchors a in [0, n-k] with a <= i <= a+k-1
        return min(i, n - k) - max(0, i - k + 1) + 1

    total = sum(1 - (1 - gamma) ** (reach(i, height) * reach(j, width))
                for i in range(height) for j in range(width))
    return total / (height * width)


def drop_block2d(x: Tensor, drop_prob: float, block_size: int, *, training: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
    """DropBlock on a batch of feature maps ``x`` of shape (B, C, H, W) (Ghiasi et al. 2018, Alg. 1).

    1. identity when not training or ``drop_prob == 0``;
    2. seeds ~ Bernoulli(gamma), sampled independently per sample and per channel, only at the
       positions where a whole ``block_size x block_size`` block fits inside the map (the green
       region of the paper's Fig. 2); gamma from :func:`dropblock_gamma`;
    3. every seed zeroes the block it anchors (a max-pool of the seed map grows seeds into
       blocks, so blocks may overlap);
    4. the kept activations are rescaled by ``count(M) / count_ones(M)`` over the whole tensor.

    A ``block_size`` larger than the map is clamped to the map's smaller side, as the authors'
    TensorFlow code does: for a square map the whole channel is then dropped with probability
    ``drop_prob`` (SpatialDropout). Even block sizes work too (a seed anchors the block's top-left
    corner; for odd sizes this is the same as centring the block on a seed of the valid region).
    """
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must lie in [0, 1], got {drop_prob}")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    if x.dim() != 4:
        raise ValueError(f"DropBlock expects feature maps of shape (B, C, H, W), got {tuple(x.shape)}")
    if not training or drop_prob == 0.0:
        return x
    mask = dropblock_mask(x, drop_prob, block_size, generator=generator)   # (B, C, H, W)
    scale = mask.numel() / mask.sum().clamp_min(1.0)                      # count(M) / count_ones(M)
    return x * mask * scale


def blocks_from_seeds(seeds: Tensor, block_size: int) -> Tensor:
    """Grow a (B, C, H-k+1, W-k+1) map of block anchors into a (B, C, H, W) map of dropped units.

    Position (i, j) is dropped iff some seed (a, b) has a <= i <= a+k-1 and b <= j <= b+k-1:
    zero-pad the seeds by k-1 on every side, then a stride-1 k x k max-pool. Overlapping blocks
    simply merge.
    """
    k = int(block_size)
    return F.max_pool2d(F.pad(seeds, (k - 1,) * 4), kernel_size=k, stride=1)


def dropblock_mask(x: Tensor, drop_prob: float, block_size: int, *,
                   generator: torch.Generator | None = None) -> Tensor:
    """The keep-mask M of DropBlock for feature maps shaped like ``x``: 1 = kept, 0 = dropped.

    Steps 2-3 of :func:`drop_block2d` (no rescaling), for drawing masks and for tests.
    """
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must lie in [0, 1], got {drop_prob}")
    if x.dim() != 4:
        raise ValueError(f"DropBlock expects feature maps of shape (B, C, H, W), got {tuple(x.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    b, c, h, w = x.shape
    k = min(int(block_size), h, w)
    gamma = dropblock_gamma(drop_prob, k, h, w)
    # Seeds where a whole block fits: (B, C, H-k+1, W-k+1); True = this position anchors a block.
    seeds = torch.rand((b, c, h - k + 1, w - k + 1), generator=generator, device=x.device) < gamma
    return 1.0 - blocks_from_seeds(seeds.to(x.dtype), k)


class DropBlock2d(nn.Module):
    """DropBlock (Ghiasi et al. 2018, https://arxiv.org/abs/1810.12890) as a module.

    ``drop_prob`` is the paper's ``1 - keep_prob``; it is a plain attribute, so
    :class:`DropBlockSchedule` can ramp it up during training. Identity in eval mode. Uses the
    global torch generator (like ``nn.Dropout``), which ``rnb.setup()`` seeds; see
    :func:`drop_block2d` for the algorithm.

    >>> db = DropBlock2d(drop_prob=0.1, block_size=3)
    >>> db(torch.ones(2, 4, 8, 8)).shape
    torch.Size([2, 4, 8, 8])
    """

    def __init__(self, drop_prob: float = 0.1, block_size: int = 3):
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1], got {drop_prob}")
        if int(block_size) != block_size or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size}")
        self.drop_prob = float(drop_prob)
        self.block_size = int(block_size)

    def forward(self, x: Tensor) -> Tensor:
        return drop_block2d(x, self.drop_prob, self.block_size, training=self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


class DropBlockSchedule:
    """Linear ramp of every :class:`DropBlock2d`'s drop probability, from 0 to ``drop_prob``.

    Ghiasi et al. (Sec. 3, "Scheduled DropBlock") decrease keep_prob linearly from 1 to its
    target over training; the authors' code does it per step. This schedule does it per epoch:
    ``schedule(epoch)`` (0-based, called at the start of each epoch, e.g. as a
    ``ClassicalTraining`` callback) sets ``drop_prob * epoch / (epochs - 1)``, so the first epoch
    trains without DropBlock and the last one with the target value (later epochs keep it).

    >>> schedule = DropBlockSchedule(model, drop_prob=0.1, epochs=10)
    >>> trainer = ClassicalTraining(model, ..., callbacks=[schedule])
    """

    def __init__(self, model: nn.Module, drop_prob: float, epochs: int):
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1], got {drop_prob}")
        if epochs < 1:
            raise ValueError(f"epochs must be positive, got {epochs}")
        self.layers = [m for m in model.modules() if isinstance(m, DropBlock2d)]
        if not self.layers:
            raise ValueError("the model has no DropBlock2d layer; build it with "
                             "regularization='dropblock'")
        self.drop_prob = float(drop_prob)
        self.epochs = int(epochs)

    def value(self, epoch: int) -> float:
        """The drop probability used during ``epoch`` (0-based)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self.epochs == 1:
            return self.drop_prob
        return self.drop_prob * min(1.0, epoch / (self.epochs - 1))

    def __call__(self, epoch: int) -> None:
        p = self.value(epoch)
        for layer in self.layers:
            layer.drop_prob = p

    def __repr__(self) -> str:
        return (f"DropBlockSchedule(drop_prob={self.drop_prob}, epochs={self.epochs}, "
                f"layers={len(self.layers)})")


# --------------------------------------------------------------------------------------------
# Squeeze-and-excitation
# --------------------------------------------------------------------------------------------

class SqueezeExcitation(nn.Module):
    """Channel attention of Hu et al. 2018 (https://arxiv.org/abs/1709.01507), Fig. 3.

    squeeze: global average pool (B, C, H, W) -> (B, C); excitation: FC(C, C/r) - ReLU -
    FC(C/r, C) - sigmoid; the sigmoid's output rescales each channel. The FC layers have biases
    as in the paper's Caffe models; the hidden width is ``max(1, C // reduction)`` so width-
    reduced models keep at least one unit. The ``gate`` submodule (the sigmoid) is where a
    forward hook reads the channel weights.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3))                                  # (B, C)
        s = self.gate(self.fc2(F.relu(self.fc1(s))))            # (B, C), each in (0, 1)
        return x * s[:, :, None, None]


# --------------------------------------------------------------------------------------------
# Regularization layers, by name
# --------------------------------------------------------------------------------------------

REGULARIZATIONS = (None, "dropout", "dropblock")


def check_regularization(regularization: str | None) -> None:
    if regularization not in REGULARIZATIONS:
        raise ValueError(f"unknown regularization {regularization!r}; choose one of "
                         f"{REGULARIZATIONS}")


def regularizer(regularization: str | None, drop_prob: float, block_size: int) -> nn.Module:
    """The layer a model inserts at its regularization points: Identity, Dropout or DropBlock2d.

    ``"dropout"`` is element-wise ``nn.Dropout(drop_prob)`` (Srivastava et al. 2014,
    https://jmlr.org/papers/v15/srivastava14a.html) on feature maps, the baseline Ghiasi et al.
    compare DropBlock with; ``"dropblock"`` is :class:`DropBlock2d`.
    """
    check_regularization(regularization)
    if regularization == "dropout":
        return nn.Dropout(drop_prob)
    if regularization == "dropblock":
        return DropBlock2d(drop_prob, block_size)
    return nn.Identity()
