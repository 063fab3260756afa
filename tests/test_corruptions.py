"""rnb.corruptions: the contract (shapes, [0, 1], seeds, errors), severities that grow, the formulas
against PIL / skimage / the ``imagecorruptions`` package, and the corruption-error table."""

import importlib
import importlib.resources
import importlib.util
import io
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from robust_nb.corruptions import (
    COLOUR_ONLY,
    CORRUPTIONS,
    SEVERITIES,
    CorruptionReport,
    brightness,
    contrast,
    corrupt,
    defocus_blur,
    elastic_transform,
    evaluate_corruptions,
    gaussian_noise,
    impulse_noise,
    jpeg_compression,
    pixelate,
    saturate,
    shot_noise,
)

SEEDS = (0, 1, 2, 3, 4)
RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "elastic_transform")


def colour_images(n: int, seed: int, digits: torch.Tensor) -> torch.Tensor:
    """(n, 3, 32, 32) 8-bit-valued colour images: MNIST digits padded to 32 px, a random stroke
    and background colour each, shaded by a smooth random field (flat areas, edges and texture)."""
    g = torch.Generator().manual_seed(seed)
    d = F.pad(digits[:n], (2, 2, 2, 2))                                     # (n, 1, 32, 32)
    fg, bg = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
    shade = F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=32, mode="bilinear")
    x = (d * fg + (1 - d) * bg) * (0.6 + 0.4 * shade)
    return (x * 255).round() / 255


@pytest.fixture(scope="module")
def grey(mnist):
    return mnist.test[0][:48]


@pytest.fixture(scope="module")
def colour(mnist):
    return colour_images(48, 0, mnist.test[0][48:])


def _names(x):
    return [c for c in CORRUPTIONS if not (c == "saturate" and x.shape[1] == 1)]


def _rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


# -- the contract -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["grey", "colour"])
def test_shape_range_dtype_and_input_untouched(kind, request):
    x = request.getfixturevalue(kind)[:8]
    before = x.clone()
    for name in _names(x):
        for severity in (1, 5):
            out = corrupt(x, name, severity, seed=0)
            assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
            assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all(), name
            assert not torch.equal(out, x), f"{name} {severity} left the images unchanged"
    assert torch.equal(x, before)
    out64 = corrupt(x.double(), "gaussian_blur", 2)
    assert out64.dtype == torch.float64
    assert torch.allclose(out64.float(), corrupt(x, "gaussian_blur", 2), atol=1e-6)


def test_empty_batch(colour):
    for name in CORRUPTIONS:
        assert corrupt(colour[:0], name, 3).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("seed", SEEDS)
def test_seed_determinism(colour, seed):
    x = colour[:8]
    for name in CORRUPTIONS:
        a, b = corrupt(x, name, 3, seed=seed), corrupt(x, name, 3, seed=seed)
        assert torch.equal(a, b), name
        other = corrupt(x, name, 3, seed=seed + 100)
        assert torch.equal(a, other) == (name not in RANDOM), name
    # an explicit generator advances: two calls differ, and replaying it repeats them
    g = torch.Generator().manual_seed(seed)
    first, second = corrupt(x, "shot_noise", 2, generator=g), corrupt(x, "shot_noise", 2, generator=g)
    assert not torch.equal(first, second)
    assert torch.equal(first, corrupt(x, "shot_noise", 2, seed=seed))


def test_global_rng_untouched(colour):
    state = torch.get_rng_state()
    for name in RANDOM:
        corrupt(colour[:4], name, 5, seed=1)
    assert torch.equal(state, torch.get_rng_state())


def test_clear_errors(grey, colour):
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(colour, "fog", 1)
    for bad in (0, 6, 2.5, True, "3", None):
        with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
            corrupt(colour, "contrast", bad)
    for bad in (colour * 1.1, colour - 0.1):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            corrupt(bad, "contrast", 1)
    nan = colour.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        corrupt(nan, "contrast", 1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        corrupt(colour[0], "contrast", 1)
    with pytest.raises(ValueError, match="colour"):
        corrupt(grey, "saturate", 1)
    with pytest.raises(ValueError, match="colour"):
        saturate(grey, 2.0)


def test_colour_only_lists_exactly_the_corruptions_grey_images_reject(grey):
    rejected = []
    for name in CORRUPTIONS:
        try:
            corrupt(grey[:2], name, 1)
        except ValueError:
            rejected.append(name)
    assert tuple(rejected) == COLOUR_ONLY == ("saturate",)


# -- severities -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["grey", "colour"])
def test_distance_grows_with_severity(kind, seed, request):
    """Every corruption moves the images further as the severity grows -- except the two whose
    CIFAR-10-C constants are not ordered that way (checked below)."""
    x = request.getfixturevalue(kind)
    for name in _names(x):
        if name in ("saturate", "elastic_transform"):
            continue
        d = [_rms(corrupt(x, name, s, seed=seed), x) for s in range(1, 6)]
        assert all(a < b for a, b in zip(d, d[1:])), (name, d)


def test_saturate_severities(colour):
    """Severities 1-2 desaturate (0.3, then 0.1 times S), 3-5 saturate more and more."""
    d = [_rms(corrupt(colour, "saturate", s), colour) for s in range(1, 6)]
    assert d[0] < d[1] and d[2] < d[3] < d[4], d
    grey_level = colour.max(1).values - colour.min(1).values                  # chroma
    assert (corrupt(colour, "saturate", 2).amax(1) - corrupt(colour, "saturate", 2).amin(1)
            ).mean() < grey_level.mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_elastic_severities(grey, seed):
    """The CIFAR-10-C constants shrink the affine part (2.56 -> 0.96 px on 32 px) while the
    displacement field grows (0 at severity 1): its part alone grows with severity."""
    side = grey.shape[-1]
    d = []
    for alpha, sigma, _ in SEVERITIES["elastic_transform"]:
        g = torch.Generator().manual_seed(seed)
        d.append(_rms(elastic_transform(grey, alpha * side, sigma * side, 0.0, g), grey))
    assert d[0] < 1e-6 and all(a < b for a, b in zip(d, d[1:])), d
    affine_only = [_rms(elastic_transform(grey, 0, 0, a * side, torch.Generator().manual_seed(seed)),
                        grey) for _, _, a in SEVERITIES["elastic_transform"]]
    assert all(a > b for a, b in zip(affine_only, affine_only[1:])), affine_only


# -- the formulas -----------------------------------------------------------------------------

def test_noise_constants(colour):
    """On a mid-grey image (no clipping at these strengths) the noise has the CIFAR-10-C sizes."""
    x = torch.full((64, 3, 32, 32), 0.5)
    n = x.numel()
    for s in range(1, 6):
        sigma = SEVERITIES["gaussian_noise"][s - 1]
        std = (corrupt(x, "gaussian_noise", s) - x).std().item()
        assert abs(std / sigma - 1) < 0.02
        rate = SEVERITIES["shot_noise"][s - 1]
        var = (corrupt(x, "shot_noise", s) - x).var().item()
        assert abs(var / (0.5 / rate) - 1) < 0.03
        amount = SEVERITIES["impulse_noise"][s - 1]
        out = corrupt(x, "impulse_noise", s)
        flipped = (out != x).float().mean().item()
        assert abs(flipped - amount) < 5 * (amount * (1 - amount) / n) ** 0.5
        assert abs((out == 1).float().mean().item() - amount / 2) < 5 * (amount / 2 / n) ** 0.5


def test_contrast_and_grey_brightness_by_hand(grey, colour):
    mean = colour.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(contrast(colour, 0.3), ((colour - mean) * 0.3 + mean).clamp(0, 1))
    assert torch.allclose(brightness(grey, 0.2), (grey + 0.2).clamp(0, 1))
    # brightness and saturate keep the hue of a pure colour; S * 0 + 0 makes it grey
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 0.5
    assert torch.allclose(brightness(red, 0.25)[:, 0], torch.full((1, 2, 2), 0.75))
    assert torch.allclose(saturate(red, 0.0), torch.full_like(red, 0.5))


def _pil(x: torch.Tensor) -> list:
    arr = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def _from_pil(images: list) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float64) for im in images]) / 255
    return torch.tensor(arr.reshape(*arr.shape[:3], -1)).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("kind", ["grey", "colour"])
def test_pixelate_and_jpeg_match_pil(kind, request):
    """The CIFAR-10-C code itself: PIL BOX down and up; PIL JPEG (bit-identical)."""
    x = request.getfixturevalue(kind)[:16]
    side = x.shape[-1]
    for s in range(1, 6):
        c = SEVERITIES["pixelate"][s - 1]
        small = int(side * c)
        ref = _from_pil([im.resize((small, small), Image.BOX).resize((side, side), Image.BOX)
                         for im in _pil(x)])
        diff = (corrupt(x, "pixelate", s) - ref).abs()
        assert diff.max() <= 2 / 255 + 1e-6 and diff.mean() < 0.5 / 255, (s, diff.max() * 255)
        quality = SEVERITIES["jpeg_compression"][s - 1]
        jpegs = []
        for im in _pil(x):
            buffer = io.BytesIO()
            im.save(buffer, "JPEG", quality=quality)
            jpegs.append(Image.open(buffer))
        assert torch.equal(corrupt(x, "jpeg_compression", s), _from_pil(jpegs)), s


def test_gaussian_blur_matches_skimage(colour):
    try:
        from skimage import filters
    except ImportError as err:
        pytest.skip(f"scikit-image (installed with the test extra's imagecorruptions) cannot be "
                    f"imported ({err}): the comparison with skimage.filters.gaussian did not run")
    arr = colour[:8].permute(0, 2, 3, 1).double().numpy()
    for s, sigma in enumerate(SEVERITIES["gaussian_blur"], start=1):
        ref = np.stack([np.clip(filters.gaussian(a, sigma=sigma, channel_axis=-1), 0, 1)
                        for a in arr])
        ref = torch.tensor(ref).permute(0, 3, 1, 2).float()
        assert torch.allclose(corrupt(colour[:8], "gaussian_blur", s), ref, atol=1e-5)


# -- against the imagecorruptions package (ImageNet-C constants, passed to our functions) --------

# The ImageNet-C constants hard-coded in imagecorruptions 1.1.2's functions, severity 1..5.
IMAGENET_C = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg_compression": (25, 18, 15, 10, 7),
}


@pytest.fixture(scope="module")
def ic():
    """``imagecorruptions.corruptions``. Version 1.1.2 (the newest on PyPI) imports
    ``pkg_resources`` only to locate its frost pictures, and setuptools >= 81 no longer ships it:
    a stand-in with ``resource_filename`` is put in place for the import and removed after."""
    stub = None
    if importlib.util.find_spec("pkg_resources") is None:
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda pkg, path: str(importlib.resources.files(pkg) / path)
        sys.modules["pkg_resources"] = stub
    try:
        return importlib.import_module("imagecorruptions.corruptions")
    except ImportError as err:   # not installed, or broken by its dependencies: say so, skip
        pytest.skip(f"the imagecorruptions package (test extra) cannot be imported ({err}): the "
                    f"cross-check against it did not run; pip install -e '.[test]'")
    finally:
        if stub is not None:
            sys.modules.pop("pkg_resources", None)


def _reference(fn, x: torch.Tensor, severity: int, pil: bool = False) -> torch.Tensor:
    """imagecorruptions' ``fn`` on each 8-bit image, its float output (before np.uint8)."""
    arr = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = [np.asarray(fn(Image.fromarray(a) if pil else a, severity), dtype=np.float64) / 255
           for a in arr]
    return torch.tensor(np.stack(out)).permute(0, 3, 1, 2).float()


def test_deterministic_corruptions_match_imagecorruptions(ic, colour):
    x = colour[:12]
    ours = {"contrast": contrast, "brightness": brightness, "saturate": saturate,
            "defocus_blur": defocus_blur, "pixelate": pixelate, "jpeg_compression": jpeg_compression}
    tolerance = {"pixelate": 1 / 255 + 1e-6, "jpeg_compression": 0.0}
    for name, fn in ours.items():
        for s, c in enumerate(IMAGENET_C[name], start=1):
            mine = fn(x, *c) if isinstance(c, tuple) else fn(x, c)
            ref = _reference(getattr(ic, name), x, s, pil=name in ("pixelate", "jpeg_compression"))
            diff = (mine - ref).abs().max().item()
            assert diff <= tolerance.get(name, 1e-5), (name, s, diff * 255)


def _moments(noise: torch.Tensor) -> tuple[float, float, float, float]:
    """Mean and variance of the values, and the standard errors of both."""
    v = noise.double().flatten()
    n, mean, var = len(v), v.mean().item(), v.var().item()
    m4 = ((v - mean) ** 4).mean().item()
    return mean, var, (var / n) ** 0.5, (max(m4 - var ** 2, 0) / n) ** 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_noise_statistics_match_imagecorruptions(ic, colour, seed):
    x = colour[:16]
    g = torch.Generator().manual_seed(seed)
    np.random.seed(seed)   # imagecorruptions draws from numpy's global generator
    for name, fn in (("gaussian_noise", gaussian_noise), ("shot_noise", shot_noise),
                     ("impulse_noise", impulse_noise)):
        for s, c in enumerate(IMAGENET_C[name], start=1):
            mean_a, var_a, se_mean_a, se_var_a = _moments(fn(x, c, g) - x)
            mean_b, var_b, se_mean_b, se_var_b = _moments(_reference(getattr(ic, name), x, s) - x)
            assert abs(mean_a - mean_b) < 5 * (se_mean_a ** 2 + se_mean_b ** 2) ** 0.5, (name, s)
            assert abs(var_a - var_b) < 5 * (se_var_a ** 2 + se_var_b ** 2) ** 0.5, (name, s)


# -- the corruption-error table ---------------------------------------------------------------

def test_evaluate_corruptions(trained_convnet, make_convnet):
    model, x, y = trained_convnet
    x, y = x[:64], y[:64]
    names, sevs = ("gaussian_noise", "contrast", "jpeg_compression"), (1, 3, 5)
    torch.manual_seed(1)
    baseline = make_convnet().eval()
    report = evaluate_corruptions(model, x, y, names, sevs, baseline=baseline, seed=3)
    assert not model.training and not baseline.training
    # accuracies are those of corrupt(x, name, s, seed) when one batch holds all images
    with torch.no_grad():
        for c in names:
            for i, s in enumerate(sevs):
                expected = (model(corrupt(x, c, s, seed=3)).argmax(1) == y).float().mean().item()
                assert report.accuracy[c][i] == pytest.approx(expected)
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert report.clean_accuracy == pytest.approx(clean)
    # CE_c = sum_s E / sum_s E_baseline, mCE their mean (Hendrycks & Dietterich 2019)
    for c in names:
        e = sum(1 - a for a in report.accuracy[c])
        e_base = sum(1 - a for a in report.baseline.accuracy[c])
        assert report.ce[c] == pytest.approx(e / e_base)
    assert report.mce == pytest.approx(np.mean(list(report.ce.values())))
    table = report.table()
    assert list(table.index) == list(names) and list(table.columns[:3]) == list(sevs)
    assert {"mean", "CE", "relative CE"} <= set(table.columns)
    # a model against itself: CE = 1 everywhere; a stored report as the baseline gives the same
    # numbers; a smaller batch size still runs (other noise, same contract)
    self_report = evaluate_corruptions(model, x, y, names, sevs, baseline=report, seed=3)
    assert self_report.mce == pytest.approx(1.0) and self_report.accuracy == report.accuracy
    again = evaluate_corruptions(model, x, y, names, sevs, baseline=report.baseline, seed=3,
                                 batch_size=16)
    assert again.accuracy["contrast"] == report.accuracy["contrast"]    # deterministic corruption
    assert 0 < report.interval("contrast", 5).high <= 1
    assert isinstance(report, CorruptionReport) and report.n == 64


def test_evaluate_corruptions_errors(trained_convnet):
    model, x, y = trained_convnet
    with pytest.raises(ValueError, match="unknown corruption"):
        evaluate_corruptions(model, x[:4], y[:4], ["snow"])
    with pytest.raises(ValueError, match="severity"):
        evaluate_corruptions(model, x[:4], y[:4], ["contrast"], [0])
    with pytest.raises(ValueError, match="colour"):
        evaluate_corruptions(model, x[:4], y[:4], ["saturate"])
    with pytest.raises(ValueError, match="baseline"):
        evaluate_corruptions(model, x[:4], y[:4], ["contrast"], baseline="resnet")
