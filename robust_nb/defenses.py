"""Small defenses that are known to be flawed, here to be broken (notebook 09), not deployed: most
look robust to a plain attack and fall to the adaptive attack their docstring names; two (the
median filter, additive noise) do not even look robust, which is a lesson too.

Every defense wraps a trained model: an ``nn.Module`` in, an ``nn.Module`` out, images in [0, 1]
of shape (N, C, H, W), logits out. A wrapper starts in its model's train/eval mode and changes no
module's mode; the attacks' :func:`robust_nb.attacks.attack_mode` handles the rest. Input
transformations are :class:`Defended` models, ``model(preprocess(x))``, whose ``.bpda()`` is the
same defense seen through BPDA (the forward pass unchanged).

=====================  ==============================  ========================================
defense                why plain PGD fails             the adaptive attack
=====================  ==============================  ========================================
``discretize``         round(): zero gradient          BPDA (``defended.bpda()``)
``median_filter``      it does not: no masking         plain PGD; BPDA if not written in torch
``jpeg``               rounding of DCT coefficients    BPDA
``random_resize_pad``  a random gradient per pass      EOT (``eot_samples=...``)
``additive_noise``     a random gradient per pass      EOT (plain PGD nearly suffices)
``scale_logits``       saturated softmax: CE grad = 0  ``loss="cw"`` or ``loss="dlr"``
``ensemble``           its members' flaws, combined    its members' attacks (``.bpda()``)
=====================  ==============================  ========================================

The randomized defenses draw from their own generator, seeded at construction (``seed``) and
re-seeded by ``.reset()``, so the same seed on the same device gives the same numbers.

>>> import robust_nb as rnb
>>> defended = rnb.defenses.jpeg(model, quality=25)
>>> x_pgd = rnb.attacks.pgd(defended, x, y, eps=0.2, alpha=0.02, steps=20)          # stalls
>>> x_bpda = rnb.attacks.pgd(defended.bpda(), x, y, eps=0.2, alpha=0.02, steps=20)  # breaks it
>>> rnb.evaluation.accuracy(defended, x_bpda, y)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attacks.adaptive import bpda

__all__ = [
    "Defended", "Discretize", "MedianFilter", "JPEG", "RandomResizePad", "AdditiveNoise",
    "ScaledLogits", "Ensemble", "discretize", "median_filter", "jpeg", "random_resize_pad",
    "additive_noise", "scale_logits", "ensemble",
]


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_batch(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} expects a float batch of images (N, C, H, W), got {shape}")


class Defended(nn.Module):
    """``model(preprocess(x))``: a classifier behind an input transformation.

    ``preprocess`` is any callable (usually a module of this file) mapping images in [0, 1] to
    images in [0, 1]. :meth:`bpda` returns the same defense with the preprocessing wrapped in
    :func:`robust_nb.attacks.bpda` (same model, same parameters, same forward values) for the
    attacker; evaluate the result on the original.

    >>> defended = Defended(Discretize(4), model)
    >>> x_adv = rnb.attacks.pgd(defended.bpda(), x, y, eps=0.3, alpha=0.01, steps=40)
    """

    def __init__(self, preprocess: Callable[[Tensor], Tensor], model: nn.Module):
        super().__init__()
        _check_model(model)
        if not callable(preprocess):
            raise ValueError(f"preprocess must be callable, got {type(preprocess).__name__}")
        self.preprocess = preprocess
        self.model = model
        self.training = model.training          # this wrapper's own flag only

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.preprocess(x))

    def bpda(self, surrogate: Callable[[Tensor], Tensor] | None = None) -> Defended:
        """This defense with BPDA on its preprocessing: the identity's gradient (or
        ``surrogate``'s) on the backward pass, the same forward pass."""
        return Defended(bpda(self.preprocess, surrogate), self.model)


class Discretize(nn.Module):
    """Round every pixel to ``levels`` evenly spaced grey levels (``levels=2``: binarize at 0.5).

    Bit-depth reduction (Xu, Evans & Qi, "Feature squeezing", NDSS 2018,
    https://arxiv.org/abs/1704.01155; as a defense also Guo et al. 2018 and, one-hot encoded,
    Buckman et al. 2018's thermometer encoding). ``round`` has a zero gradient almost everywhere,
    so gradient attacks see nothing; BPDA with the identity breaks it (Athalye, Carlini & Wagner
    2018, https://arxiv.org/abs/1802.00420, Sec. 5.2 and 5.4).
    """

    def __init__(self, levels: int = 4):
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
        self.levels = levels

    def forward(self, x: Tensor) -> Tensor:
        _check_batch(x, "Discretize")
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class MedianFilter(nn.Module):
    """Replace every pixel by the median of its ``size`` x ``size`` neighbourhood, per channel.

    Median smoothing (Xu, Evans & Qi, "Feature squeezing", NDSS 2018,
    https://arxiv.org/abs/1704.01155). Its flaw is not gradient masking but that it buys nothing:
    written in torch, the median is a selection like max-pooling, its gradient (to the one pixel
    that is each window's median) is exact almost everywhere, and plain PGD breaks the filtered
    model about as well as the bare one (tests/test_defenses.py: 11.5% vs 5.5% at eps 0.2 on
    MNIST) while clean accuracy drops. Implemented outside autograd (scipy, as in the paper), the
    same filter shows a gradient attack nothing; BPDA with the identity (``.bpda()``) then breaks
    it (Athalye, Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420, Sec. 4.1), though on
    this differentiable version it is weaker than the exact gradient.

    Deviations: odd sizes only (the paper also uses 2 x 2, whose median needs a tie rule), and
    borders are mirrored without repeating the edge pixel (``F.pad(mode="reflect")``; scipy's
    default, which the paper's code uses, repeats it).
    """

    def __init__(self, size: int = 3):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
            raise ValueError(f"size must be an odd integer >= 3, got {size!r}")
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        _check_batch(x, "MedianFilter")
        k, p = self.size, self.size // 2
        if min(x.shape[-2:]) <= p:
            raise ValueError(f"MedianFilter(size={k}) needs images larger than {p} pixels a side")
        windows = F.pad(x, (p, p, p, p), mode="reflect").unfold(2, k, 1).unfold(3, k, 1)
        return windows.flatten(-2).median(dim=-1).values                 # (N, C, H, W)

    def extra_repr(self) -> str:
        return f"size={self.size}"


# The JPEG standard's example quantization tables (ITU-T T.81, Annex K, Tables K.1 and K.2).
_LUMA_TABLE = [[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
               [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
               [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
               [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]]
_CHROMA_TABLE = [[17, 18, 24, 47, 99, 99, 99, 99], [18, 21, 26, 66, 99, 99, 99, 99],
                 [24, 26, 56, 99, 99, 99, 99, 99], [47, 66, 99, 99, 99, 99, 99, 99]] + \
                [[99] * 8] * 4
# JFIF's RGB -> YCbCr (offsets of 128 on Cb and Cr are added separately).
_YCBCR = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]


def quantization_tables(quality: int) -> Tensor:
    """The luminance and chrominance tables (2, 8, 8) scaled to ``quality`` in [1, 100] as libjpeg
    (IJG) does: ``scale = 5000 / q`` below 50, else ``200 - 2 q``; ``floor((T * scale + 50) / 100)``
    clipped to [1, 255]."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer in [1, 100], got {quality!r}")
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor([_LUMA_TABLE, _CHROMA_TABLE], dtype=torch.float64)
    return torch.floor((base * scale + 50) / 100).clamp(1, 255)


def _dct_matrix(n: int = 8) -> Tensor:
    """The orthonormal DCT-II matrix D (n, n): ``D @ block @ D.T`` is JPEG's forward 2-D DCT."""
    k = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


class JPEG(nn.Module):
    """JPEG compression and decompression in tensor ops: RGB -> YCbCr, 8 x 8 block DCT, division by
    the quality-scaled quantization tables, rounding, and back (decoded to 8-bit pixels).

    As a defense: Dziugaite et al. 2016 (https://arxiv.org/abs/1608.00853), Das et al. 2017
    (https://arxiv.org/abs/1705.02900), Guo et al., "Countering adversarial images using input
    transformations", ICLR 2018 (https://arxiv.org/abs/1711.00117). Rounding the DCT
    coefficients has a zero gradient almost everywhere; BPDA with the identity breaks it (Athalye,
    Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420, Sec. 5.4.1, where it was applied to
    Guo et al.'s JPEG defense).

    Deviations from a real codec: no chroma subsampling (4:4:4), no entropy coding (lossless,
    so irrelevant), floating-point DCT (libjpeg's default is an integer DCT: a few pixels differ
    by a level or two), images padded to multiples of 8 by repeating the edge (as libjpeg does)
    and cropped back. One-channel images are coded as luminance only; three channels as 8-bit
    YCbCr (JFIF's conversion), rounded to 8 bits again before the conversion back.
    """

    def __init__(self, quality: int = 50):
        super().__init__()
        self.quality = quality
        self.register_buffer("tables", quantization_tables(quality).float(), persistent=False)
        self.register_buffer("dct", _dct_matrix().float(), persistent=False)
        self.register_buffer("ycbcr", torch.tensor(_YCBCR), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        _check_batch(x, "JPEG")
        n, c, h, w = x.shape
        if c not in (1, 3):
            raise ValueError(f"JPEG codes 1 (grey) or 3 (RGB) channels, got {c}")
        dct, ycbcr = self.dct.to(x.dtype), self.ycbcr.to(x.dtype)
        tables = self.tables.to(x.dtype)[[0] if c == 1 else [0, 1, 1]]      # (C, 8, 8)
        img = x * 255
        if c == 3:                                   # the encoder's 8-bit YCbCr
            offset = torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device)[:, None, None]
            img = torch.round(torch.einsum("ij,njhw->nihw", ycbcr, img) + offset).clamp(0, 255)
        img = F.pad(img - 128, (0, -w % 8, 0, -h % 8), mode="replicate")  # level shift, pad
        hp, wp = img.shape[-2:]
        blocks = img.view(n, c, hp // 8, 8, wp // 8, 8).transpose(3, 4)      # (N, C, H/8, W/8, 8, 8)
        coef = dct @ blocks @ dct.T
        q = tables[None, :, None, None]                                       # (1, C, 1, 1, 8, 8)
        coef = torch.round(coef / q) * q                                      # the lossy step
        blocks = dct.T @ coef @ dct
        img = blocks.transpose(3, 4).reshape(n, c, hp, wp)[..., :h, :w] + 128
        if c == 3:                                   # the decoder's 8-bit YCbCr, then RGB
            img = torch.round(img).clamp(0, 255) - offset
            img = torch.einsum("ij,njhw->nihw", torch.linalg.inv(ycbcr), img)
        return torch.round(img.clamp(0, 255)) / 255                          # 8-bit decoded pixels

    def extra_repr(self) -> str:
        return f"quality={self.quality}"


class _Randomized(nn.Module):
    """A preprocessing that draws from its own generator (one per device), seeded with ``seed``."""

    def __init__(self, seed: int):
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def reset(self, seed: int | None = None) -> None:
        """Start the random stream again from ``seed`` (default: the constructor's)."""
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"seed must be an integer, got {seed!r}")
            self.seed = seed
        self._generators.clear()


class RandomResizePad(_Randomized):
    """Shrink every image to a random size and zero-pad it at a random offset back to the input
    size, anew on every forward pass.

    Randomization (Xie, Wang, Zhang, Ren & Yuille, "Mitigating adversarial effects through
    randomization", ICLR 2018, https://arxiv.org/abs/1711.01991). Each forward pass -- so each
    gradient -- sees another transformation, and a perturbation fitted to one does not transfer to
    the next draw; EOT (``eot_samples``) averages the gradient over the transformations and breaks
    it (Athalye, Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420, Sec. 5.3.1).

    Deviations: the image shrinks (height uniform in ``[ceil(min_scale * H), H]`` pixels, the width
    in proportion) and is padded back to H x W, instead of growing (299 -> [299, 331) pixels) and
    feeding a larger input, so the wrapped model keeps its input size; size and offset are drawn
    per image. Nearest-neighbour resizing, as in the paper's code (here by ``grid_sample``, which
    passes the gradient to the pixel each output pixel copies).
    """

    def __init__(self, min_scale: float = 0.8, seed: int = 0):
        super().__init__(seed)
        if not (isinstance(min_scale, (int, float)) and 0 < min_scale <= 1):
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale!r}")
        self.min_scale = float(min_scale)

    def forward(self, x: Tensor) -> Tensor:
        _check_batch(x, "RandomResizePad")
        n, _, h, w = x.shape
        gen, dev = self.generator(x.device), x.device
        lo = max(math.ceil(self.min_scale * h), 1)
        sh = torch.randint(lo, h + 1, (n,), generator=gen, device=dev)             # (N,) heights
        sw = (sh * w / h).round().clamp(1, w)                                       # (N,) widths
        top = (torch.rand(n, generator=gen, device=dev) * (h - sh + 1)).floor()
        left = (torch.rand(n, generator=gen, device=dev) * (w - sw + 1)).floor()
        # Output pixel (r, c) copies input pixel ((r - top) * h / sh, (c - left) * w / sw), in
        # grid_sample's normalized coordinates (align_corners=False); outside the image: zeros.
        theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2] = w / sw, (w - 2 * left) / sw - 1
        theta[:, 1, 1], theta[:, 1, 2] = h / sh, (h - 2 * top) / sh - 1
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def extra_repr(self) -> str:
        return f"min_scale={self.min_scale}, seed={self.seed}"


class AdditiveNoise(_Randomized):
    """Add Gaussian noise of standard deviation ``sigma`` to every pixel, then clip to [0, 1],
    anew on every forward pass.

    Noise injection at test time, the input layer of Liu, Cheng, Zhang & Hsieh, "Towards robust
    neural networks via random self-ensemble", ECCV 2018 (https://arxiv.org/abs/1712.00673) --
    here without their noisy training and ensembling of predictions. Each gradient is that of one
    noise draw; EOT (``eot_samples``) estimates the gradient of the expected loss (Athalye,
    Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420, Sec. 4.2; Athalye et al. 2018,
    https://arxiv.org/abs/1707.07397). On a model not trained with noise, noise small enough to
    keep clean accuracy hardly hides anything: ten PGD steps, one draw each, are already a crude
    EOT, and EOT-10 gains only a few points more (tests/test_defenses.py).
    """

    def __init__(self, sigma: float = 0.2, seed: int = 0):
        super().__init__(seed)
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        self.sigma = float(sigma)

    def forward(self, x: Tensor) -> Tensor:
        _check_batch(x, "AdditiveNoise")
        noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device,
                            dtype=x.dtype)
        return (x + self.sigma * noise).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, seed={self.seed}"


class ScaledLogits(nn.Module):
    """``scale * model(x)``: the same decisions, a softmax saturated to exact 0s and 1s.

    What defensive distillation amounts to at test time (Papernot et al., "Distillation as a
    defense to adversarial perturbations against deep neural networks", IEEE S&P 2016,
    https://arxiv.org/abs/1511.04508: trained at temperature T, deployed at T = 1, the logits are
    ~T times larger). In float32 the cross-entropy's gradient ``softmax(z) - onehot(y)`` is then
    exactly zero on every confidently classified input, so CE-based PGD stalls although the
    decision function -- and so the true robustness -- is unchanged. Losses on the logits break
    it: the CW margin (``loss="cw"``; Carlini & Wagner, "Defensive distillation is not robust to
    adversarial examples", 2016, https://arxiv.org/abs/1607.04311) or the scale-invariant DLR
    (``loss="dlr"``; Croce & Hein 2020, https://arxiv.org/abs/2003.01690).
    """

    def __init__(self, model: nn.Module, scale: float = 1000.0):
        super().__init__()
        _check_model(model)
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.model = model
        self.scale = float(scale)
        self.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class Ensemble(nn.Module):
    """The average prediction of several (defended) models: log of the mean softmax
    (``combine="probs"``, returned as log-probabilities, finite even when a member saturates) or
    the mean logits (``combine="logits"``).

    Stacking weak defenses does not make a strong one (He, Wei, Chen, Carlini & Song, "Adversarial
    example defenses: ensembles of weak defenses are not strong", WOOT 2017,
    https://arxiv.org/abs/1706.04701): the ensemble is one differentiable function of its
    members, so the attack that breaks each member, applied to all at once, breaks it. Members
    behind non-differentiable preprocessing are attacked through :meth:`bpda`; randomized ones
    with EOT; saturated ones with the CW or DLR loss.
    """

    def __init__(self, models: Sequence[nn.Module], combine: str = "probs"):
        super().__init__()
        models = list(models) if isinstance(models, (list, tuple, nn.ModuleList)) else None
        if not models:
            raise ValueError("models must be a non-empty list of torch.nn.Module")
        for m in models:
            _check_model(m)
        if combine not in ("probs", "logits"):
            raise ValueError(f"combine must be 'probs' or 'logits', got {combine!r}")
        self.members = nn.ModuleList(models)
        self.combine = combine
        self.training = all(m.training for m in models)

    def forward(self, x: Tensor) -> Tensor:
        outs = torch.stack([m(x).float() for m in self.members])            # (M, N, K)
        if self.combine == "logits":
            return outs.mean(0)
        return torch.logsumexp(F.log_softmax(outs, dim=-1), dim=0) - math.log(len(self.members))

    def bpda(self, surrogate: Callable[[Tensor], Tensor] | None = None) -> Ensemble:
        """The same ensemble with every :class:`Defended` (or nested ensemble) member's
        preprocessing wrapped in BPDA; other members as they are."""
        return Ensemble([m.bpda(surrogate) if hasattr(m, "bpda") else m for m in self.members],
                        self.combine)

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}"


# -- one call per defense: a trained model in, the defended model out ------------------------------

def discretize(model: nn.Module, levels: int = 4) -> Defended:
    """``model`` behind :class:`Discretize` (``levels`` grey levels). Breaks with BPDA."""
    return Defended(Discretize(levels), model)


def median_filter(model: nn.Module, size: int = 3) -> Defended:
    """``model`` behind a ``size`` x ``size`` :class:`MedianFilter`. Breaks with BPDA."""
    return Defended(MedianFilter(size), model)


def jpeg(model: nn.Module, quality: int = 50) -> Defended:
    """``model`` behind :class:`JPEG` compression at ``quality``. Breaks with BPDA."""
    return Defended(JPEG(quality), model)


def random_resize_pad(model: nn.Module, min_scale: float = 0.8, seed: int = 0) -> Defended:
    """``model`` behind :class:`RandomResizePad`. Breaks with EOT (``eot_samples``)."""
    return Defended(RandomResizePad(min_scale, seed), model)


def additive_noise(model: nn.Module, sigma: float = 0.2, seed: int = 0) -> Defended:
    """``model`` behind :class:`AdditiveNoise`. Breaks with EOT (``eot_samples``)."""
    return Defended(AdditiveNoise(sigma, seed), model)


def scale_logits(model: nn.Module, scale: float = 1000.0) -> ScaledLogits:
    """``model`` with its logits multiplied by ``scale``. Breaks with ``loss="cw"`` or "dlr"."""
    return ScaledLogits(model, scale)


def ensemble(models: Sequence[nn.Module], combine: str = "probs") -> Ensemble:
    """An :class:`Ensemble` of ``models``. Breaks with its members' adaptive attacks."""
    return Ensemble(models, combine)
