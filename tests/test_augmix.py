"""rnb.augmix: the operations against PIL (the reference's library), the convex mixing, the
Jensen-Shannon consistency loss, and ``augmix=True`` in the one training loop."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from robust_nb import augmix as augmix_module
from robust_nb.augmix import (
    AUGMIX_OPS,
    augment,
    augmix,
    augmix_loss,
    jsd_consistency,
    mixing_weights,
)
from robust_nb.training import AdversarialTraining, ClassicalTraining, TradesTraining

SEEDS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def colour(mnist):
    """(16, 3, 32, 32) 8-bit-valued colour images: digits on coloured, shaded backgrounds."""
    g = torch.Generator().manual_seed(0)
    d = F.pad(mnist.test[0][:16], (2, 2, 2, 2))
    fg, bg = torch.rand(16, 3, 1, 1, generator=g), torch.rand(16, 3, 1, 1, generator=g)
    shade = F.interpolate(torch.rand(16, 1, 4, 4, generator=g), size=32, mode="bilinear")
    return ((d * fg + (1 - d) * bg) * (0.6 + 0.4 * shade) * 255).round() / 255


def _pil_reference(x: torch.Tensor, name: str, level: float, sign: float) -> torch.Tensor:
    """google-research/augmix augmentations.py with the level and sign fixed."""
    side = x.shape[-1]
    out = []
    for a in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        im = Image.fromarray(a)
        if name == "autocontrast":
            im = ImageOps.autocontrast(im)
        elif name == "equalize":
            im = ImageOps.equalize(im)
        elif name == "posterize":
            im = ImageOps.posterize(im, 4 - int(level * 4 / 10))
        elif name == "solarize":
            im = ImageOps.solarize(im, 256 - int(level * 256 / 10))
        elif name == "rotate":
            im = im.rotate(int(level * 30 / 10) * sign, resample=Image.BILINEAR)
        else:
            shear, shift = level * 0.3 / 10 * sign, int(level * (side / 3) / 10) * sign
            data = {"shear_x": (1, shear, 0, 0, 1, 0), "shear_y": (1, 0, 0, shear, 1, 0),
                    "translate_x": (1, 0, shift, 0, 1, 0), "translate_y": (1, 0, 0, 0, 1, shift)}
            im = im.transform((side, side), Image.AFFINE, data[name], resample=Image.BILINEAR)
        out.append(np.asarray(im, dtype=np.float64) / 255)
    return torch.tensor(np.stack(out)).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("level", [0.7, 2.9, 9.5])
def test_operations_match_pil(colour, level):
    """Every operation as PIL computes it; PIL truncates its bilinear results to 8 bits (< 1/255)."""
    n = len(colour)
    for index, name in enumerate(AUGMIX_OPS):
        for sign in (1.0, -1.0):
            ours = augment(colour, torch.full((n,), index), torch.full((n,), level),
                           torch.full((n,), sign))
            ref = _pil_reference(colour, name, level, sign)
            exact = name in ("equalize", "posterize", "solarize", "translate_x", "translate_y")
            tol = 1e-6 if exact else 1 / 255 + 1e-6
            assert (ours - ref).abs().max() <= tol, (name, level, sign)


def test_operations_per_image(colour):
    """One batch, a different operation, level and sign per image: each as if alone."""
    n = len(colour)
    g = torch.Generator().manual_seed(0)
    op = torch.randint(len(AUGMIX_OPS), (n,), generator=g)
    level = 0.1 + 2.9 * torch.rand(n, generator=g)
    sign = torch.where(torch.rand(n, generator=g) > 0.5, -1.0, 1.0)
    batch = augment(colour, op, level, sign)
    for i in range(n):
        alone = augment(colour[i:i + 1], op[i:i + 1], level[i:i + 1], sign[i:i + 1])
        assert torch.allclose(batch[i:i + 1], alone, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_mixing_weights_are_convex(seed):
    for alpha in (1.0, 0.3, 0.01):
        w, m = mixing_weights(256, 3, alpha, torch.Generator().manual_seed(seed))
        assert w.shape == (256, 3) and m.shape == (256,)
        assert (w >= 0).all() and torch.allclose(w.sum(1), torch.ones(256), atol=1e-6)
        assert ((m >= 0) & (m <= 1)).all() and torch.isfinite(m).all()
    # Dirichlet(1, 1, 1) has mean 1/3 per weight, Beta(1, 1) mean 1/2 (5 standard errors)
    w, m = mixing_weights(4000, 3, 1.0, torch.Generator().manual_seed(seed))
    assert (w.mean(0) - 1 / 3).abs().max() < 5 * (2 / 36 / 4000) ** 0.5
    assert abs(m.mean().item() - 0.5) < 5 * (1 / 12 / 4000) ** 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_augmix_is_a_convex_mixture(colour, seed, monkeypatch):
    """With every chain replaced by white images: x = 1 stays 1 (the weights sum to 1) and x = 0
    becomes m, the Beta draw that mixing_weights makes first from the same generator."""
    monkeypatch.setattr(augmix_module, "apply_ops", lambda x, op, severity, generator: torch.ones_like(x))
    ones = torch.ones(8, 3, 32, 32)
    out = augmix(ones, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(out, ones, atol=1e-6)
    out = augmix(torch.zeros_like(ones), generator=torch.Generator().manual_seed(seed))
    _, m = mixing_weights(8, 3, 1.0, torch.Generator().manual_seed(seed))
    assert torch.allclose(out, m.view(8, 1, 1, 1).expand_as(out), atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_augmix_contract(colour, mnist, seed):
    before = colour.clone()
    state = torch.get_rng_state()
    for x in (colour, mnist.test[0][:16]):
        a = augmix(x, generator=torch.Generator().manual_seed(seed))
        b = augmix(x, generator=torch.Generator().manual_seed(seed))
        c = augmix(x, generator=torch.Generator().manual_seed(seed + 100))
        assert a.shape == x.shape and a.dtype == x.dtype
        assert a.min() >= 0 and a.max() <= 1
        assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    for depth in (1, 3):
        assert augmix(colour, depth=depth, width=2, generator=torch.Generator()).shape == colour.shape
    assert torch.equal(colour, before) and torch.equal(state, torch.get_rng_state())
    with pytest.raises(ValueError, match="severity"):
        augmix(colour, severity=11)


# -- the Jensen-Shannon consistency -----------------------------------------------------------

def test_jsd_zero_for_identical_distributions():
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    assert jsd_consistency(logits, logits, logits).item() == pytest.approx(0, abs=1e-7)
    assert jsd_consistency(logits, logits + 3.0).item() == pytest.approx(0, abs=1e-7)   # same softmax


def test_jsd_hand_formula():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    q = torch.tensor([[0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    r = torch.tensor([[0.2, 0.2, 0.6], [0.6, 0.2, 0.2]])
    expected = 0.0
    for b in range(2):
        m = [(p[b, k] + q[b, k] + r[b, k]).item() / 3 for k in range(3)]
        for dist in (p, q, r):
            expected += sum(dist[b, k].item() * math.log(dist[b, k].item() / m[k])
                            for k in range(3)) / 3
    expected /= 2                                                       # mean over the batch
    got = jsd_consistency(p.log(), q.log(), r.log())
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert jsd_consistency(r.log(), p.log(), q.log()).item() == pytest.approx(expected, rel=1e-5)
    # two distributions: the textbook JS divergence, bounded by log 2
    two = jsd_consistency(torch.tensor([[0.0, -50.0]]), torch.tensor([[-50.0, 0.0]])).item()
    assert 0 < two <= math.log(2) + 1e-6
    with pytest.raises(ValueError, match="two or more"):
        jsd_consistency(p)


def test_augmix_loss_is_ce_plus_lambda_jsd(colour):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))     # no BatchNorm
    y = torch.arange(len(colour)) % 10
    loss, logits = augmix_loss(model, colour, y, jsd_weight=12.0,
                               generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    v1, v2 = augmix(colour, generator=g), augmix(colour, generator=g)
    clean = model(colour)
    expected = F.cross_entropy(clean, y) + 12.0 * jsd_consistency(clean, model(v1), model(v2))
    assert torch.allclose(logits, clean, atol=1e-6)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss0, _ = augmix_loss(model, colour, y, jsd_weight=0.0, generator=torch.Generator().manual_seed(3))
    assert loss0.item() == pytest.approx(F.cross_entropy(model(v1), y).item(), rel=1e-5)


# -- the training option ----------------------------------------------------------------------

def _tiny_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 14 * 14, 10))


@pytest.mark.parametrize("seed", SEEDS)
def test_training_with_augmix(mnist, seed):
    x, y = mnist.train[0][:64], mnist.train[1][:64]
    runs = []
    for _ in range(2):
        torch.manual_seed(seed)
        model = _tiny_model()
        trainer = ClassicalTraining(model, epochs=1, lr=0.05, batch_size=32, augmix=True,
                                    seed=seed, quiet=True, amp=False)
        history = trainer.fit((x, y))
        assert math.isfinite(history.records[-1]["loss"]) and trainer.global_step == 2
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))                # same seed, same weights
    config = trainer.config_dict()
    assert config["augmix"] is True and config["augmix_jsd_weight"] == 12.0


def test_training_augmix_without_jsd_and_resume(mnist, tmp_path, interrupt_at):
    """jsd_weight=0 (one AugMix view, cross-entropy) trains; an interrupted run resumed from its
    checkpoint ends with the same weights (the AugMix generator is saved and restored)."""
    x, y = mnist.train[0][:64], mnist.train[1][:64]

    def kwargs(path, stop):
        return dict(epochs=2, lr=0.05, batch_size=32, augmix=True, augmix_jsd_weight=0.0, seed=1,
                    quiet=True, amp=False, checkpoint=path, callbacks=[interrupt_at(stop)])

    torch.manual_seed(0)
    straight = ClassicalTraining(_tiny_model(), **kwargs(tmp_path / "a.pt", -1))
    straight.fit((x, y))
    torch.manual_seed(0)
    with pytest.raises(interrupt_at.error):
        ClassicalTraining(_tiny_model(), **kwargs(tmp_path / "b.pt", 1)).fit((x, y))
    torch.manual_seed(99)
    resumed = ClassicalTraining(_tiny_model(), **kwargs(tmp_path / "b.pt", -1))
    resumed.fit((x, y), resume=True)
    assert math.isfinite(resumed.history.records[-1]["loss"])
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_augmix_option_checks(mnist):
    model = _tiny_model()
    plain = ClassicalTraining(model, epochs=1, lr=0.1, batch_size=32, quiet=True)
    assert not any(k.startswith("augmix") for k in plain.config_dict())   # old cache keys kept
    with pytest.raises(ValueError, match="mixup"):
        ClassicalTraining(model, epochs=1, lr=0.1, batch_size=32, augmix=True, mixup_alpha=1.0)
    with pytest.raises(ValueError, match="augmix_severity"):
        ClassicalTraining(model, epochs=1, lr=0.1, batch_size=32, augmix=True, augmix_severity=20)
    with pytest.raises(ValueError, match="perturb"):
        AdversarialTraining(model, epochs=1, lr=0.1, batch_size=32, eps=0.1, augmix=True)
    with pytest.raises(ValueError, match="training_loss"):
        TradesTraining(model, epochs=1, lr=0.1, batch_size=32, augmix=True)
