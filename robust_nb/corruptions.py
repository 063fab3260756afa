"""Common corruptions as batched tensor ops, and the corruption error of a model (CIFAR-10-C style).

After D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions
and Perturbations", ICLR 2019, https://arxiv.org/abs/1903.12261. Reference code:
``ImageNet-C/create_c/make_cifar_c.py`` in https://github.com/hendrycks/robustness (the CIFAR-10-C
constants used here) and the ``imagecorruptions`` package (https://github.com/bethgelab/
imagecorruptions, ImageNet-C constants, also for grey images).

Every corruption takes ``(N, C, H, W)`` floats in [0, 1] and returns a new tensor of the same shape
and dtype in [0, 1], on the input's device (JPEG alone makes a round trip through the CPU, see
below). Random corruptions draw only from a ``torch.Generator`` on that device, so
``corrupt(x, name, severity, seed=s)`` gives the same images for the same seed on the same device.

>>> x_c = corrupt(x, "gaussian_noise", severity=3, seed=0)
>>> report = evaluate_corruptions(model, x, y, baseline=standard_model)
>>> report.table()          # accuracy per corruption and severity, CE per corruption
>>> report.mce               # mean corruption error relative to the baseline

The corruptions (names as in the reference code) and their five CIFAR-10-C severities
(:data:`SEVERITIES`):

* ``gaussian_noise`` x + N(0, sigma^2): sigma 0.04, 0.06, 0.08, 0.09, 0.10.
* ``shot_noise`` Poisson(x * rate) / rate: rate 500, 250, 100, 75, 50.
* ``impulse_noise`` salt-and-pepper on a fraction ``amount`` of the values (each channel on its own,
  salt and pepper equally likely): 0.01, 0.02, 0.03, 0.05, 0.07.
* ``defocus_blur`` a disk of ``radius`` anti-aliased by a 3x3 Gaussian of ``alias_blur``:
  (0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1); borders reflected (OpenCV's
  ``BORDER_REFLECT_101``, the default of ``cv2.filter2D``).
* ``gaussian_blur`` sigma 0.4, 0.6, 0.7, 0.8, 1 (``skimage.filters.gaussian``: truncated at 4
  sigma, edge pixels repeated). One of the paper's held-out validation corruptions.
* ``contrast`` (x - mean) * c + mean with the per-channel image mean: c 0.75, 0.5, 0.4, 0.3, 0.15.
* ``brightness`` V + c in HSV: 0.05, 0.1, 0.15, 0.2, 0.3 (on a grey image: x + c, what HSV gives).
* ``saturate`` S * a + b in HSV: (0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2); colour
  images only (a ValueError on one channel; :data:`COLOUR_ONLY` lists it, so
  ``[c for c in CORRUPTIONS if c not in COLOUR_ONLY]`` are the ones for grey images). A held-out
  validation corruption of the paper.
* ``elastic_transform`` a random affine map (corners moved by up to ``affine`` px), then a smooth
  random displacement field (uniform noise blurred by a Gaussian of ``sigma``, times ``alpha``).
  (alpha, sigma, affine) are fractions of the image side: (0, 0, 0.08), (0.05, 0.2, 0.07),
  (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03) (x 32 in the reference; x 28 on
  MNIST here).
* ``pixelate`` box-filter down to ``int(side * c)`` pixels and back up: c 0.95, 0.9, 0.85, 0.75,
  0.65 (PIL's ``BOX`` resampling both ways, reproduced as resampling matrices).
* ``jpeg_compression`` JPEG at quality 80, 65, 58, 50, 40.

Of the paper's 15 test corruptions, glass, motion and zoom blur, snow, frost and fog are not here;
``gaussian_blur`` and ``saturate`` come from its 4 validation corruptions. An mCE computed over
:data:`CORRUPTIONS` is therefore not comparable to published CIFAR-10-C numbers; compare models
with each other on the same images.

Differences from the reference, all checked in ``tests/test_corruptions.py``:

* The reference works on 8-bit images and ``np.uint8`` truncates its float results; here the
  outputs stay float (no quantisation), except JPEG, which rounds to 8 bits before encoding.
  Against ``imagecorruptions`` with the same parameters, on 8-bit inputs: contrast, brightness,
  saturate, defocus blur and Gaussian blur agree to 1e-5 (float32 vs float64); pixelate to
  2/255 (PIL rounds to 8 bits after each of its resampling passes); JPEG exactly.
* JPEG: PIL's JPEG encoder and decoder (libjpeg), as the reference, so the output is the
  reference's exactly (quality tables, 4:2:0 chroma subsampling, decoder); the one corruption that
  leaves the device and loops over images in Python (under half a millisecond per 32x32 image).
  Rejected: a DCT quantisation written in torch would stay on the device but would not reproduce
  libjpeg's integer DCT, rounding and chroma upsampling; ``torchvision.io.encode_jpeg`` is
  bit-identical on the CPU but deprecated since torchvision 0.29, and nvJPEG on a GPU differs.
  One-channel images are saved as grey JPEGs (``imagecorruptions`` goes through RGB and back).
* Noise: torch's Gaussian, Poisson and uniform generators instead of numpy's; the same
  distributions (tested by their statistics against ``imagecorruptions``). Impulse noise flips each
  value with probability ``amount`` (today's ``skimage.util.random_noise``); the skimage of 2018
  flipped exactly ``ceil(amount * size)`` values, with repeats.
* Elastic transform: bilinear sampling with ``grid_sample`` instead of OpenCV's ``warpAffine``
  (which rounds coordinates to 1/32 pixel) and scipy's ``map_coordinates``; the border modes are
  the reference's (reflect-101 for the affine, half-sample symmetric for the displacement).
* ``imagecorruptions`` pixelates back up with ``NEAREST``, the CIFAR code with ``BOX``; for an
  upscaling both pick the same source pixel, so one function serves both.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import check_images
from .modes import model_device, model_mode

__all__ = ["CORRUPTIONS", "COLOUR_ONLY", "SEVERITIES", "corrupt", "evaluate_corruptions", "CorruptionReport",
           "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "gaussian_blur",
           "contrast", "brightness", "saturate", "elastic_transform", "pixelate", "jpeg_compression"]

# CIFAR-10-C constants, from make_cifar_c.py (hendrycks/robustness), one tuple per severity 1..5.
SEVERITIES: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),                      # sigma
    "shot_noise": (500, 250, 100, 75, 50),                                 # rate
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),                       # amount
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # radius, alias
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),                            # sigma (px)
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),                               # factor
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),                             # added to V
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),      # S * a + b
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                          (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),           # alpha, sigma, affine / side
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),                             # size factor
    "jpeg_compression": (80, 65, 58, 50, 40),                              # quality
}
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITIES)
# Corruptions that need colour (3-channel) images: a grey image has no saturation to change.
COLOUR_ONLY: tuple[str, ...] = ("saturate",)
RANDOM_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "elastic_transform")


# -- noise ------------------------------------------------------------------------------------

def gaussian_noise(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """``clip(x + N(0, sigma^2))``, independently per value."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + sigma * noise).clamp(0, 1)


def shot_noise(x: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """``clip(Poisson(x * rate) / rate)``: photon counting noise (a larger rate is milder)."""
    return (torch.poisson(x * rate, generator=generator) / rate).clamp(0, 1)


def impulse_noise(x: Tensor, amount: float, generator: torch.Generator | None = None) -> Tensor:
    """Salt-and-pepper: each value becomes 0 or 1 (equally likely) with probability ``amount``."""
    flipped = torch.rand(x.shape, generator=generator, device=x.device) < amount
    salt = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
    return torch.where(flipped, salt.to(x.dtype), x)


# -- blur -------------------------------------------------------------------------------------

def _pad_index(n: int, pad: int, mode: str, device) -> Tensor:
    """Indices into a length-``n`` axis padded by ``pad`` on both sides: ``symmetric``
    (scipy 'reflect', d c b a | a b c d), ``reflect101`` (OpenCV's default, d c b | a b c d) or
    ``edge``; any ``pad``, by repeated reflection."""
    i = torch.arange(-pad, n + pad, device=device)
    if mode == "edge":
        return i.clamp(0, n - 1)
    if mode == "symmetric":
        i = i.remainder(2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)
    period = max(2 * n - 2, 1)                                   # reflect101
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def _filter2d(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Correlate every channel with the (kh, kw) ``kernel`` (odd sizes), same-size output."""
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    x = x.index_select(2, _pad_index(h, kh // 2, mode, x.device))
    x = x.index_select(3, _pad_index(w, kw // 2, mode, x.device))
    weight = kernel.to(x.device, x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, groups=c)


def _gaussian_kernel1d(sigma: float, truncate: float) -> Tensor:
    """scipy.ndimage's Gaussian: radius ``int(truncate * sigma + 0.5)``, normalised."""
    radius = int(truncate * sigma + 0.5)
    if sigma == 0 or radius == 0:
        return torch.ones(1, dtype=torch.float64)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_filter(x: Tensor, sigma: float, mode: str, truncate: float = 4.0) -> Tensor:
    k = _gaussian_kernel1d(sigma, truncate)
    x = _filter2d(x, k[:, None], mode)                           # along H
    return _filter2d(x, k[None, :], mode)                        # along W


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """``skimage.filters.gaussian(x, sigma)``: truncated at 4 sigma, edge pixels repeated."""
    return _gaussian_filter(x, sigma, "edge").clamp(0, 1)


def _disk(radius: float, alias_blur: float) -> Tensor:
    """The reference's ``disk``: a normalised disk on a 17x17 grid (wider beyond radius 8), blurred
    by a 3x3 Gaussian (5x5 beyond radius 8) of sigma ``alias_blur`` with reflect-101 borders as in
    ``cv2.GaussianBlur``; all-zero outer rows and columns dropped (they change nothing)."""
    if radius <= 8:
        half, ksize = 8, 3
    else:
        half, ksize = int(radius), 5
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius ** 2).double()
    disk = disk / disk.sum()
    g = torch.exp(-(torch.arange(ksize, dtype=torch.float64) - ksize // 2) ** 2
                  / (2 * alias_blur ** 2))
    g = g / g.sum()
    kernel = _filter2d(disk[None, None], g[:, None] * g[None, :], "reflect101")[0, 0]
    keep = kernel.abs().sum(0) > 0                               # symmetric: rows = columns
    return kernel[keep][:, keep]


def defocus_blur(x: Tensor, radius: float, alias_blur: float) -> Tensor:
    """Correlation with an anti-aliased disk (``cv2.filter2D``: reflect-101 borders)."""
    return _filter2d(x, _disk(radius, alias_blur), "reflect101").clamp(0, 1)


# -- colour -----------------------------------------------------------------------------------

def contrast(x: Tensor, factor: float) -> Tensor:
    """``(x - mean) * factor + mean``, the mean per image and channel."""
    mean = x.mean(dim=(2, 3), keepdim=True)                      # (N, C, 1, 1)
    return ((x - mean) * factor + mean).clamp(0, 1)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    """``skimage.color.rgb2hsv`` on (N, 3, H, W): ties go to blue, then green, then red."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    zero = delta == 0
    safe = torch.where(zero, torch.ones_like(delta), delta)
    s = torch.where(zero, torch.zeros_like(delta), delta / torch.where(zero, safe, v))
    h = torch.where(b == v, 4 + (r - g) / safe, torch.where(g == v, 2 + (b - r) / safe,
                                                             (g - b) / safe))
    h = torch.where(zero, torch.zeros_like(h), (h / 6).remainder(1))
    return torch.stack((h, s, v), 1)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    """``skimage.color.hsv2rgb`` on (N, 3, H, W)."""
    h, s, v = hsv.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = hi.long().remainder(6)                              # (N, H, W)
    table = torch.stack([torch.stack(c, 1) for c in
                         ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    index = sector[None, :, None].expand(1, -1, 3, -1, -1)       # (1, N, 3, H, W)
    return table.gather(0, index)[0]


def brightness(x: Tensor, shift: float) -> Tensor:
    """``V + shift`` in HSV (clipped); on a grey image ``x + shift``, which is what HSV gives."""
    if x.shape[1] == 1:
        return (x + shift).clamp(0, 1)
    _check_rgb(x, "brightness")
    hsv = _rgb_to_hsv(x)
    hsv = torch.stack((hsv[:, 0], hsv[:, 1], (hsv[:, 2] + shift).clamp(0, 1)), 1)
    return _hsv_to_rgb(hsv).clamp(0, 1)


def saturate(x: Tensor, scale: float, shift: float = 0.0) -> Tensor:
    """``S * scale + shift`` in HSV (clipped); colour (3-channel) images only."""
    _check_rgb(x, "saturate")
    hsv = _rgb_to_hsv(x)
    hsv = torch.stack((hsv[:, 0], (hsv[:, 1] * scale + shift).clamp(0, 1), hsv[:, 2]), 1)
    return _hsv_to_rgb(hsv).clamp(0, 1)


def _check_rgb(x: Tensor, name: str) -> None:
    if x.shape[1] != 3:
        raise ValueError(f"{name} works in HSV and needs colour (3-channel) images, got "
                         f"{x.shape[1]} channel(s); a grey image has no saturation to change")


# -- geometry ---------------------------------------------------------------------------------

def _sample(x: Tensor, rows: Tensor, cols: Tensor, reflect101: bool) -> Tensor:
    """Bilinear ``x`` at pixel coordinates ``rows``, ``cols`` (N, H, W); reflected borders:
    about the border pixels' centres (reflect-101) or about the image edge (half-sample)."""
    h, w = x.shape[-2:]
    if reflect101:    # align_corners=True: -1 .. 1 spans the outer pixels' centres
        grid = torch.stack((2 * cols / (w - 1) - 1, 2 * rows / (h - 1) - 1), -1)
    else:             # align_corners=False: -1 .. 1 spans the outer pixels' edges
        grid = torch.stack(((2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1), -1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection",
                         align_corners=reflect101)


def elastic_transform(x: Tensor, alpha: float, sigma: float, affine: float,
                      generator: torch.Generator | None = None) -> Tensor:
    """The reference's elastic transform, parameters in pixels: a random affine map that moves the
    three points ``centre + (s, s)``, ``centre + (s, -s)``, ``centre - (s, s)`` (``s = side // 3``)
    by up to ``affine`` px each, then a displacement ``alpha * gaussian(U(-1, 1), sigma)`` per
    pixel and axis (Gaussian truncated at 3 sigma)."""
    n, _, h, w = x.shape
    dev, f64 = x.device, torch.float64 if x.device.type != "mps" else torch.float32
    centre = torch.tensor([w // 2, h // 2], dtype=f64, device=dev)           # (x, y) as in cv2
    side = min(h, w) // 3
    src = torch.stack([centre + side, centre + torch.tensor([side, -side], dtype=f64, device=dev),
                       centre - side])                                        # (3, 2)
    dst = src + (torch.rand((n, 3, 2), generator=generator, device=dev, dtype=f64) * 2 - 1) * affine
    # The affine map M (2x3) with M [p; 1] = q for the three pairs (cv2.getAffineTransform).
    a = torch.cat([src, torch.ones(3, 1, dtype=f64, device=dev)], 1)         # (3, 3)
    m = torch.linalg.solve(a, dst).transpose(1, 2)                            # (n, 2, 3)
    # cv2.warpAffine samples the source at M^-1 (x, y).
    lin_inv = torch.linalg.inv(m[:, :, :2])                                   # (n, 2, 2)
    shift_inv = -(lin_inv @ m[:, :, 2:])                                      # (n, 2, 1)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=f64, device=dev),
                            torch.arange(w, dtype=f64, device=dev), indexing="ij")
    pts = torch.stack((xs.flatten(), ys.flatten()))                           # (2, H*W)
    srcpts = (lin_inv @ pts + shift_inv).view(n, 2, h, w)
    out = _sample(x, srcpts[:, 1], srcpts[:, 0], reflect101=True)
    noise = torch.rand((n, 2, h, w), generator=generator, device=dev, dtype=f64) * 2 - 1
    disp = _gaussian_filter(noise, sigma, "symmetric", truncate=3.0) * alpha  # (n, 2, H, W)
    return _sample(out, ys + disp[:, 1], xs + disp[:, 0], reflect101=False).clamp(0, 1)


def _pil_resample_matrix(in_size: int, out_size: int) -> Tensor:
    """(out, in) weights of PIL's ``BOX`` resampling (``precompute_coeffs`` in Resample.c)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        for j in range(lo, hi):
            t = (j - centre + 0.5) / filterscale
            weights[i, j] = 1.0 if -0.5 < t <= 0.5 else 0.0
        weights[i] /= weights[i].sum()
    return weights


def pixelate(x: Tensor, factor: float) -> Tensor:
    """Box-resample down to ``int(side * factor)`` and back up (PIL ``BOX``, as the reference)."""
    h, w = x.shape[-2:]
    small_h, small_w = int(h * factor), int(w * factor)
    rows = _pil_resample_matrix(small_h, h) @ _pil_resample_matrix(h, small_h)    # (H, H)
    cols = _pil_resample_matrix(small_w, w) @ _pil_resample_matrix(w, small_w)    # (W, W)
    rows, cols = rows.to(x.device, x.dtype), cols.to(x.device, x.dtype)
    return (rows @ x @ cols.T).clamp(0, 1)


def jpeg_compression(x: Tensor, quality: int) -> Tensor:
    """Save as JPEG at ``quality`` and load again, with PIL (libjpeg) on the CPU, as the reference."""
    from PIL import Image

    if x.shape[1] not in (1, 3):
        raise ValueError(f"JPEG needs 1 or 3 channels, got {x.shape[1]}")
    q = (x.detach() * 255).round().clamp(0, 255).to(device="cpu", dtype=torch.uint8)
    out = torch.empty_like(q)
    for i, image in enumerate(q.permute(0, 2, 3, 1).numpy()):     # (H, W, C) each
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            buffer, "JPEG", quality=int(quality))
        decoded = torch.from_numpy(np.asarray(Image.open(buffer)).copy())
        out[i] = decoded.view(*decoded.shape[:2], -1).permute(2, 0, 1)
    return out.to(x.device, x.dtype) / 255


# -- by name and severity ---------------------------------------------------------------------

def _check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) \
            or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    return int(severity)


def _check_name(name) -> str:
    if name not in SEVERITIES:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    return name


def _apply(x: Tensor, name: str, severity: int, generator: torch.Generator) -> Tensor:
    """One corruption at one severity on a checked batch (float32 or float64 inside)."""
    c = SEVERITIES[name][severity - 1]
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    side = min(x.shape[-2:])
    if name == "gaussian_noise":
        out = gaussian_noise(work, c, generator)
    elif name == "shot_noise":
        out = shot_noise(work, c, generator)
    elif name == "impulse_noise":
        out = impulse_noise(work, c, generator)
    elif name == "defocus_blur":
        out = defocus_blur(work, *c)
    elif name == "gaussian_blur":
        out = gaussian_blur(work, c)
    elif name == "contrast":
        out = contrast(work, c)
    elif name == "brightness":
        out = brightness(work, c)
    elif name == "saturate":
        out = saturate(work, *c)
    elif name == "elastic_transform":
        out = elastic_transform(work, *(side * v for v in c), generator=generator)
    elif name == "pixelate":
        out = pixelate(work, c)
    else:
        out = jpeg_compression(work, c)
    return out.to(x.dtype)


def corrupt(x: Tensor, name: str, severity: int, seed: int = 0,
            generator: torch.Generator | None = None) -> Tensor:
    """``x`` (N, C, H, W) in [0, 1] with corruption ``name`` at ``severity`` (1 to 5), CIFAR-10-C
    constants (:data:`SEVERITIES`); a new tensor on x's device, same dtype.

    Randomness (noises, elastic transform): a ``torch.Generator`` on x's device seeded with
    ``seed``, or ``generator`` if given (then ``seed`` is ignored and the generator advances).

    >>> x_c = corrupt(x, "shot_noise", 5, seed=0)
    """
    check_images(x, name="images to corrupt")
    name, severity = _check_name(name), _check_severity(severity)
    if name == "saturate":
        _check_rgb(x, name)
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
    elif generator.device.type != x.device.type:
        raise ValueError(f"the generator is on {generator.device}, the images on {x.device}")
    return _apply(x, name, severity, generator)


# -- evaluation -------------------------------------------------------------------------------

@dataclass
class CorruptionReport:
    """Accuracies of a model on corrupted copies of ``n`` labelled images.

    ``accuracy[name][severity - 1]`` (fractions); ``clean_accuracy``; with a baseline, the
    corruption errors of the paper, E = 1 - accuracy:

    * ``ce[name] = sum_s E(name, s) / sum_s E_baseline(name, s)``, ``mce`` = their mean;
    * ``relative_ce[name] = sum_s (E(name, s) - E_clean) / sum_s (E_base(name, s) - E_base_clean)``,
      ``relative_mce`` = their mean (how much accuracy a corruption costs, relative to the
      baseline's loss; undefined, NaN, where the baseline loses nothing).

    ``table()`` is a pandas DataFrame of all of it; ``interval(name, s)`` the 95% Wilson interval.
    """

    accuracy: dict[str, list[float]]
    clean_accuracy: float
    n: int
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    baseline: CorruptionReport | None = field(default=None, repr=False)

    def errors(self, name: str) -> list[float]:
        return [1 - a for a in self.accuracy[name]]

    @property
    def ce(self) -> dict[str, float] | None:
        if self.baseline is None:
            return None
        return {c: _ratio(sum(self.errors(c)), sum(self.baseline.errors(c))) for c in self.accuracy}

    @property
    def mce(self) -> float | None:
        return None if self.baseline is None else sum(self.ce.values()) / len(self.ce)

    @property
    def relative_ce(self) -> dict[str, float] | None:
        if self.baseline is None:
            return None
        e0, b0 = 1 - self.clean_accuracy, 1 - self.baseline.clean_accuracy
        return {c: _ratio(sum(e - e0 for e in self.errors(c)),
                          sum(e - b0 for e in self.baseline.errors(c))) for c in self.accuracy}

    @property
    def relative_mce(self) -> float | None:
        return None if self.baseline is None else sum(self.relative_ce.values()) / len(self.ce)

    def interval(self, name: str, severity: int):
        """The accuracy at (``name``, ``severity``) as a :class:`robust_nb.stats.Accuracy`."""
        from .stats import Accuracy

        return Accuracy(self.accuracy[name][self.severities.index(severity)], self.n)

    def table(self):
        """Rows: corruptions; columns: accuracy per severity, their mean, and CE / relative CE
        when there is a baseline."""
        import pandas as pd

        df = pd.DataFrame.from_dict(self.accuracy, orient="index", columns=list(self.severities))
        df["mean"] = df[list(self.severities)].mean(axis=1)
        if self.baseline is not None:
            df["CE"] = pd.Series(self.ce)
            df["relative CE"] = pd.Series(self.relative_ce)
        df.index.name = "corruption"
        return df


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


@torch.no_grad()
def evaluate_corruptions(model: nn.Module, x: Tensor, y: Tensor,
                         corruptions: Sequence[str] = CORRUPTIONS,
                         severities: Sequence[int] = (1, 2, 3, 4, 5),
                         baseline: nn.Module | CorruptionReport | None = None, *, seed: int = 0,
                         batch_size: int = 500) -> CorruptionReport:
    """Accuracy of ``model`` on every corruption x severity of ``(x, y)``, and with ``baseline``
    (a model, evaluated on the same corrupted images, or an earlier report on the same images) the
    corruption errors CE and mCE of Hendrycks & Dietterich (2019).

    Each (corruption, severity) draws from a generator on the model's device seeded with ``seed``
    that advances across batches: with ``batch_size >= len(x)`` the images are exactly
    ``corrupt(x, name, severity, seed=seed)``; other batch sizes give other (equally valid) noise.
    Models run in eval mode (their mode is restored).

    >>> report = evaluate_corruptions(model, x, y, baseline=standard_model)
    >>> report.mce, report.table()
    """
    check_images(x, y)
    if len(x) == 0:
        raise ValueError("the accuracy of an empty batch is undefined: pass at least one image")
    names = tuple(_check_name(c) for c in corruptions)
    sevs = tuple(_check_severity(s) for s in severities)
    if "saturate" in names:
        _check_rgb(x, "saturate")
    if not names or not sevs or len(set(names)) < len(names) or len(set(sevs)) < len(sevs):
        raise ValueError("corruptions and severities must be non-empty and without repeats")
    models = [model]
    if isinstance(baseline, CorruptionReport):
        missing = [(c, s) for c in names for s in sevs
                   if c not in baseline.accuracy or s not in baseline.severities]
        if missing or baseline.n != len(x):
            raise ValueError(f"the baseline report lacks {missing[:3]} or was measured on "
                             f"{baseline.n} images, not {len(x)}")
        baseline = CorruptionReport(
            {c: [baseline.accuracy[c][baseline.severities.index(s)] for s in sevs] for c in names},
            baseline.clean_accuracy, baseline.n, sevs)
    elif isinstance(baseline, nn.Module):
        models.append(baseline)
    elif baseline is not None:
        raise ValueError(f"baseline must be a model or a CorruptionReport, got "
                         f"{type(baseline).__name__}")
    device = model_device(model)
    x, y = x.to(device), y.to(device)

    def correct(xs: Tensor, ys: Tensor) -> Tensor:              # (len(models),) counts
        return torch.stack([(m(xs.to(model_device(m))).argmax(1).to(device) == ys).sum()
                            for m in models])

    results = [{c: [] for c in names} for _ in models]
    with contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(model_mode(m, training=False))
        clean = sum(correct(x[i:i + batch_size], y[i:i + batch_size])
                    for i in range(0, len(x), batch_size))
        for c in names:
            for s in sevs:
                gen = torch.Generator(device=device).manual_seed(int(seed))
                counts = sum(correct(_apply(x[i:i + batch_size], c, s, gen), y[i:i + batch_size])
                             for i in range(0, len(x), batch_size))
                for r, k in zip(results, counts.tolist()):             # one host sync
                    r[c].append(k / len(x))
    clean = [k / len(x) for k in clean.tolist()]
    if len(models) == 2:
        baseline = CorruptionReport(results[1], clean[1], len(x), sevs)
    return CorruptionReport(results[0], clean[0], len(x), sevs, baseline)
