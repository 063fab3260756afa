"""Spatial robustness: rotations and translations, the worst case over a grid and random draws.

After L. Engstrom, B. Tran, D. Tsipras, L. Schmidt, A. Madry, "Exploring the Landscape of Spatial
Robustness", ICML 2019, https://arxiv.org/abs/1712.02779. Reference code:
https://github.com/MadryLab/adversarial_spatial (``spatial_attack.py``; the transformation in
``resnet.py``; the settings in ``config.json``).

The threat model: an image may be rotated by at most 30 degrees and shifted by at most 3 pixels
in each direction (the paper's limits on MNIST and CIFAR-10). Nothing else changes, so every
transformed image is as easy for a person as the original. Three ways to measure a model:

* **grid** (:func:`spatial_grid_attack`, the paper's strongest attack): try every combination of
  a list of angles and a list of shifts (dx and dy from the same list) on every image; an image
  counts as correct only if the model is right on all of them. The paper's grid is 31 angles
  ``linspace(-30, 30, 31)`` x 5 shifts ``linspace(-3, 3, 5)`` per direction, 775 transformations.
* **worst of k random** (:func:`random_spatial`, ``.accuracy``): k transformations drawn
  uniformly from the whole range, per image (the paper: k = 10).
* **random, on average** (:func:`random_spatial`, ``.mean_accuracy``): the expected accuracy
  ``E_t[1{f(t(x)) = y}]`` under a uniformly random transformation t, estimated from k draws per
  image. This expectation over the transformations' distribution is what an EOT attacker
  (Athalye et al. 2018, ``eot_samples=`` of the gradient attacks) averages; the worst case is what
  an adversary who picks the transformation gets.

The transformation (:func:`rotate_translate`) rotates the image about its centre by ``angle``
degrees (counter-clockwise on screen, as ``tf.contrib.image.rotate`` in the reference and
``torchvision``'s ``rotate``), then shifts it by ``dx`` pixels to the right and ``dy`` pixels
down; bilinear sampling, zero (black) outside the image. The reference pads the image with 16
zero pixels, rotates, translates and crops back: the same map and the same zero fill (its
bilinear sampler is TensorFlow's, ours ``grid_sample``).

The worst transformation of an image is the reference's choice: among the transformations the
model gets wrong, the one of largest cross-entropy; if it gets none wrong, the largest
cross-entropy overall.

>>> res = spatial_grid_attack(model, x, y, angles=torch.linspace(-30, 30, 31),
...                           shifts=torch.linspace(-3, 3, 5))
>>> res.accuracy, res.grid_accuracy().shape      # worst case; accuracy per (angle, dx, dy)
>>> rnd = random_spatial(model, x, y, max_angle=30, max_shift=3, draws=10, seed=0)
>>> rnd.mean_accuracy, rnd.accuracy              # expectation; worst of 10 draws
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attacks import check_model_inputs
from .data import check_image_format
from .modes import model_device, model_mode

__all__ = ["rotate_translate", "transform_grid", "spatial_grid_attack", "random_spatial",
           "SpatialResult"]


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64      # MPS has no float64


def _per_image(value, n: int, device: torch.device, name: str) -> Tensor:
    """A number, a 0-d tensor or an (n,) tensor as an (n,) tensor of ``_work_dtype``."""
    if isinstance(value, Tensor):
        if value.dim() > 1 or (value.dim() == 1 and len(value) != n):
            raise ValueError(f"{name} must be a number or one value per image ({n}), got shape "
                             f"{tuple(value.shape)}")
        if value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be real numbers, got dtype {value.dtype}")
        return value.to(device, _work_dtype(device)).expand(n)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or a tensor of one value per image, "
                         f"got {value!r}")
    return torch.full((n,), float(value), dtype=_work_dtype(device), device=device)


def rotate_translate(x: Tensor, angle, dx=0.0, dy=0.0) -> Tensor:
    """``x`` (N, C, H, W) rotated by ``angle`` degrees about its centre (counter-clockwise on
    screen), then shifted by ``dx`` pixels right and ``dy`` pixels down; bilinear, zero outside.

    ``angle``, ``dx``, ``dy``: a number for every image, or a tensor of one value per image.
    Returns a new tensor of x's shape, dtype and device (values stay in [0, 1] for inputs in
    [0, 1]: bilinear weights are convex). ``rotate_translate(x, 0)`` is ``x``;
    ``rotate_translate(x, 90)`` is ``torch.rot90(x, 1, dims=(2, 3))`` for square images.

    >>> x_t = rotate_translate(x, angle=torch.full((len(x),), 15.0), dx=2, dy=-1)
    """
    check_image_format(x)
    n, _, h, w = x.shape
    dev = x.device
    a, tx, ty = (_per_image(v, n, dev, name) for v, name in ((angle, "angle"), (dx, "dx"),
                                                              (dy, "dy")))
    rad = torch.deg2rad(a)
    cos, sin = torch.cos(rad), torch.sin(rad)
    # Pixel coordinates about the centre, x right and y down: the output pixel p shows the input
    # at q = R^-1 (p - t), with R^-1 = [[cos, -sin], [sin, cos]] (R turns counter-clockwise on
    # screen). affine_grid works in coordinates scaled to [-1, 1] (align_corners=False: u = 2X/W),
    # so theta = S R^-1 S^-1 and its shift -S R^-1 t, with S = diag(2/W, 2/H).
    sx, sy = 2 / w, 2 / h
    theta = torch.stack([
        torch.stack([cos, -sin * sx / sy, -sx * (cos * tx - sin * ty)], 1),
        torch.stack([sin * sy / sx, cos, -sy * (sin * tx + cos * ty)], 1)], 1)   # (N, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _values(v, name: str) -> Tensor:
    """A non-empty 1-D list of finite numbers (a sequence or a tensor) as a float64 CPU tensor."""
    if isinstance(v, Tensor):
        t = v.detach().to("cpu", torch.float64)
    elif isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and all(
            isinstance(e, numbers.Real) and not isinstance(e, bool) for e in v):
        t = torch.tensor([float(e) for e in v], dtype=torch.float64)
    else:
        raise ValueError(f"{name} must be a 1-D sequence or tensor of numbers, got {v!r}")
    if t.dim() != 1 or len(t) == 0 or not torch.isfinite(t).all():
        raise ValueError(f"{name} must be a non-empty 1-D list of finite numbers, got {v!r}")
    return t


def transform_grid(angles, shifts) -> Tensor:
    """Every ``(angle, dx, dy)`` with the angle from ``angles`` and dx, dy from ``shifts``: a
    (len(angles) * len(shifts)**2, 3) float64 tensor, angle-major (then dx, then dy)."""
    a, s = _values(angles, "angles"), _values(shifts, "shifts")
    ga, gx, gy = torch.meshgrid(a, s, s, indexing="ij")
    return torch.stack([ga.flatten(), gx.flatten(), gy.flatten()], 1)


@dataclass
class SpatialResult:
    """How a model fares on G transformations of each of N labelled images.

    ``params[i, g]`` is ``(angle, dx, dy)`` of transformation g of image i (degrees, pixels);
    ``correct[i, g]`` whether the model classifies it as ``y[i]``; ``loss[i, g]`` its
    cross-entropy. For a grid the G transformations are the same for every image (``params`` is
    then an expanded view) and ``angles`` / ``shifts`` hold the grid's axes.
    """

    params: Tensor          # (N, G, 3)
    correct: Tensor         # (N, G) bool
    loss: Tensor            # (N, G) float32
    angles: Tensor | None = None     # the grid's axes (grid attacks only)
    shifts: Tensor | None = None

    @property
    def n(self) -> int:
        return self.correct.shape[0]

    @property
    def robust(self) -> Tensor:
        """(N,) bool: right on every transformation (the worst case)."""
        return self.correct.all(1)

    @property
    def accuracy(self) -> float:
        """Worst-case accuracy: the fraction of images right on all G transformations."""
        return self.robust.sum().item() / self.n

    @property
    def mean_accuracy(self) -> float:
        """Accuracy averaged over images and transformations; for random draws an estimate of
        the expected accuracy under a random transformation. Not a count out of N: its 95%
        interval is :meth:`mean_interval`."""
        return self.correct.float().mean().item()

    def mean_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """A conservative interval for :attr:`mean_accuracy` over the images: the Wilson interval
        of a proportion out of N. Averaging k draws per image can only lower the variance below
        the binomial one, ``Var(mean_g c_ig) <= p(1 - p)``, whatever the draws' correlation."""
        from .stats import wilson_interval

        return wilson_interval(self.mean_accuracy * self.n, self.n, confidence)

    def accuracy_per_transform(self) -> Tensor:
        """(G,) accuracy on transformation g (meaningful when every image got the same g)."""
        return self.correct.float().mean(0)

    def grid_accuracy(self) -> Tensor:
        """The accuracy at each grid point, shaped (angles, dx, dy); grid attacks only."""
        if self.angles is None or self.shifts is None:
            raise ValueError("grid_accuracy needs a grid result (spatial_grid_attack); random "
                             "draws differ from image to image")
        k = len(self.shifts)
        return self.accuracy_per_transform().view(len(self.angles), k, k)

    @property
    def worst(self) -> Tensor:
        """(N,) index of each image's worst transformation: the wrong one of largest
        cross-entropy, else the largest cross-entropy (the reference's rule)."""
        wrong = ~self.correct
        any_wrong = wrong.any(1, keepdim=True)
        key = torch.where(any_wrong & ~wrong, torch.full_like(self.loss, -math.inf), self.loss)
        return key.argmax(1)

    @property
    def worst_params(self) -> Tensor:
        """(N, 3): ``(angle, dx, dy)`` of each image's worst transformation."""
        return self.params[torch.arange(self.n, device=self.params.device),
                           self.worst.to(self.params.device)]

    def worst_images(self, x: Tensor) -> Tensor:
        """The images ``x`` (the ones measured) under their worst transformations."""
        angle, dx, dy = self.worst_params.to(x.device).unbind(1)
        return rotate_translate(x, angle, dx, dy)


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


@torch.no_grad()
def _evaluate(model: nn.Module, x: Tensor, y: Tensor, params: Tensor,
              batch_size: int) -> tuple[Tensor, Tensor]:
    """Correctness and cross-entropy of ``model`` on every ``(i, g)``: image i under
    ``params[i, g]``; (N, G) each, on x's device. Pairs go through the model in chunks of
    ``batch_size`` transformed images."""
    n, g = params.shape[:2]
    device = model_device(model)
    correct = torch.empty(n * g, dtype=torch.bool, device=x.device)
    loss = torch.empty(n * g, dtype=torch.float32, device=x.device)
    with model_mode(model, training=False):
        for start in range(0, n * g, batch_size):
            k = torch.arange(start, min(start + batch_size, n * g), device=params.device)
            i, j = k // g, k % g
            p = params[i, j].to(x.device)                             # (B, 3)
            xt = rotate_translate(x[i.to(x.device)], p[:, 0], p[:, 1], p[:, 2])
            logits = model(xt.to(device)).float().to(x.device)
            yi = y[i.to(y.device)].to(x.device)
            correct[start:start + len(k)] = logits.argmax(1) == yi
            loss[start:start + len(k)] = F.cross_entropy(logits, yi, reduction="none")
    return correct.view(n, g), loss.view(n, g)


def spatial_grid_attack(model: nn.Module, x: Tensor, y: Tensor, angles, shifts, *,
                        batch_size: int = 1000) -> SpatialResult:
    """Every rotation in ``angles`` (degrees) combined with every shift ``(dx, dy)`` from
    ``shifts`` x ``shifts`` (pixels) on every image of ``(x, y)``; the worst case per image.

    ``result.accuracy`` is the worst-case accuracy (right on the whole grid), never above the
    accuracy at any single grid point; ``result.grid_accuracy()`` the accuracy per grid point;
    ``result.worst_images(x)`` the images under their worst transformations. The paper's grid:
    ``angles=torch.linspace(-30, 30, 31), shifts=torch.linspace(-3, 3, 5)``. The model runs in
    eval mode (its mode is restored), without gradients.

    >>> res = spatial_grid_attack(model, x, y, torch.linspace(-30, 30, 7), [-3, 0, 3])
    """
    check_model_inputs(model, x, y)
    batch_size = _check_batch_size(batch_size)
    grid = transform_grid(angles, shifts)                              # (G, 3)
    params = grid.to(x.device, _work_dtype(x.device))[None].expand(len(x), -1, -1)
    correct, loss = _evaluate(model, x, y, params, batch_size)
    return SpatialResult(params, correct, loss, _values(angles, "angles"),
                         _values(shifts, "shifts"))


def random_spatial(model: nn.Module, x: Tensor, y: Tensor, max_angle: float = 30.0,
                   max_shift: float = 3.0, draws: int = 10, *, seed: int = 0,
                   generator: torch.Generator | None = None,
                   batch_size: int = 1000) -> SpatialResult:
    """``draws`` random transformations per image, angle uniform in ``[-max_angle, max_angle]``
    degrees and dx, dy uniform in ``[-max_shift, max_shift]`` pixels, each image its own
    (the reference's random attack).

    ``result.mean_accuracy`` estimates the expected accuracy under a random transformation;
    ``result.accuracy`` is the worst of the ``draws`` (the paper's worst-of-10 with draws=10).
    Randomness: a generator on x's device seeded with ``seed``, or ``generator`` (then ``seed``
    is ignored and the generator advances).

    >>> rnd = random_spatial(model, x, y, 30, 3, draws=10, seed=0)
    """
    check_model_inputs(model, x, y)
    batch_size = _check_batch_size(batch_size)
    for value, name in ((max_angle, "max_angle"), (max_shift, "max_shift")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(draws, bool) or not isinstance(draws, numbers.Integral) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
    elif generator.device.type != x.device.type:
        raise ValueError(f"the generator is on {generator.device}, the images on {x.device}")
    u = torch.rand((len(x), int(draws), 3), generator=generator, device=x.device,
                   dtype=_work_dtype(x.device)) * 2 - 1                 # (N, k, 3) in [-1, 1)
    limits = torch.tensor([max_angle, max_shift, max_shift], dtype=u.dtype, device=x.device)
    params = u * limits
    correct, loss = _evaluate(model, x, y, params, batch_size)
    return SpatialResult(params, correct, loss)
