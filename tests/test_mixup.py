"""mixup_batch: the mixing is the paper's (one lam per batch, a permutation), lam ~ Beta(a, a)."""

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from robust_nb.losses import mixup_batch


def _identity_batch(batch):
    """Image i is the one-hot vector e_i (as a (B, B, 1, 1) batch): mixing shows who met whom."""
    return torch.eye(batch).reshape(batch, batch, 1, 1)


def _decode(x_mixed):
    """From mixed one-hot images, read lam_i (weight on itself) and partner_i."""
    w = x_mixed.flatten(1)  # (B, B): row i = lam e_i + (1 - lam) e_perm[i]
    own = w.diagonal().clone()
    others = w.clone()
    others.fill_diagonal_(-1.0)
    return own, others.argmax(1), w


def test_mixing_is_one_lam_and_a_permutation():
    batch, k = 64, 10
    x = _identity_batch(batch)
    y = torch.arange(batch) % k
    xm, soft = mixup_batch(x, y, alpha=1.0, num_classes=k, generator=torch.Generator().manual_seed(3))
    own, partner, w = _decode(xm)
    fixed = own > 1 - 1e-6           # perm[i] == i: the image is its own partner
    lam = own[~fixed][0]
    assert 0 < lam < 1
    assert torch.allclose(own[~fixed], lam.expand_as(own[~fixed]), atol=1e-6)  # one lam per batch
    perm = torch.where(fixed, torch.arange(batch), partner)
    assert sorted(perm.tolist()) == list(range(batch))                          # a permutation
    expected_x = lam * x + (1 - lam) * x[perm]
    assert torch.allclose(xm, expected_x, atol=1e-6)
    expected_soft = lam * F.one_hot(y, k) + (1 - lam) * F.one_hot(y[perm], k)
    assert torch.allclose(soft, expected_soft.float(), atol=1e-6)
    assert torch.allclose(soft.sum(1), torch.ones(batch))


def test_soft_target_cross_entropy_equals_the_reference_loss():
    # Reference (mixup-cifar10): lam * CE(out, y_a) + (1 - lam) * CE(out, y_b)
    batch, k = 32, 10
    x = _identity_batch(batch)
    y = torch.randint(0, k, (batch,), generator=torch.Generator().manual_seed(0))
    xm, soft = mixup_batch(x, y, alpha=0.4, num_classes=k, generator=torch.Generator().manual_seed(1))
    own, partner, _ = _decode(xm)
    moved = own < 1 - 1e-6
    lam = own[moved][0]
    perm = torch.where(moved, partner, torch.arange(batch))
    logits = torch.randn(batch, k, generator=torch.Generator().manual_seed(2))
    ref = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
    assert torch.allclose(F.cross_entropy(logits, soft), ref, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_lam_follows_beta_alpha_alpha(alpha):
    x = _identity_batch(4)
    y = torch.arange(4)
    g = torch.Generator().manual_seed(0)
    lams = []
    for _ in range(600):
        _, soft = mixup_batch(x, y, alpha=alpha, num_classes=4, generator=g)
        lams.append(soft.max(1).values.min().item())  # rows of moved images hold lam, 1 - lam
    # The largest entry of a moved row is max(lam, 1 - lam): compare with its law, which for a
    # symmetric Beta is that of |2 lam - 1| mapped back; use the two-sided KS test of max(lam, 1-lam).
    m = torch.tensor(lams, dtype=torch.float64)
    moved = m < 1 - 1e-9  # all four fixed happens with probability 1/24
    sample = m[moved].numpy()
    cdf = lambda t: stats.beta.cdf(t, alpha, alpha) - stats.beta.cdf(1 - t, alpha, alpha)  # noqa: E731
    assert stats.kstest(sample, cdf).pvalue > 1e-3


def test_seeded_and_in_range():
    x = torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (50,), generator=torch.Generator().manual_seed(0))
    x0 = x.clone()
    a = mixup_batch(x, y, 1.0, 10, generator=torch.Generator().manual_seed(7))
    b = mixup_batch(x, y, 1.0, 10, generator=torch.Generator().manual_seed(7))
    c = mixup_batch(x, y, 1.0, 10, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].min() >= 0 and a[0].max() <= 1
    assert a[0].dtype == x.dtype and a[1].dtype == x.dtype
    assert torch.equal(x, x0) and a[0].shape == x.shape  # the input is untouched


def test_alpha_zero_is_no_mixing():
    x = torch.rand(6, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    xm, soft = mixup_batch(x, y, 0.0, 3)
    assert torch.equal(xm, x) and xm is not x
    assert torch.equal(soft, F.one_hot(y, 3).float())


@pytest.mark.parametrize("kwargs, match", [
    (dict(alpha=-0.5), "alpha"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(y=torch.zeros(5, dtype=torch.long)), "labels of shape"),
    (dict(y=torch.zeros(6)), "integer labels"),
    (dict(x=torch.zeros(6, 1, 4, 4, dtype=torch.long)), "floating-point"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_input_raises(kwargs, match):
    args = dict(x=torch.rand(6, 1, 4, 4), y=torch.zeros(6, dtype=torch.long), alpha=1.0, num_classes=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mixup_batch(**args)


def test_mixup_composes_with_adversarial_training(mnist):
    # The trainer mixes the *perturbed* batch: perturb() first, then mixup_batch. A PGD trainer
    # with mixup_alpha > 0 must therefore feed the model blends of adversarial examples.
    from robust_nb.training.adversarial import AdversarialTraining

    class Recording(AdversarialTraining):
        def perturb(self, x, y):
            self.adv = super().perturb(x, y)
            return self.adv

    x, y = mnist.train[0][::50], mnist.train[1][::50]  # 80 images, every class
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    trainer = Recording(model, epochs=1, lr=0.05, batch_size=80, eps=0.1, alpha=0.05, steps=1,
                        mixup_alpha=1.0, seed=0, quiet=True)
    trainer.fit((x, y))
    fed = seen[-1]                       # the last forward of the step: the training forward
    adv = trainer.adv
    assert not torch.equal(adv, fed)     # mixing happened...
    # ...and replaying the trainer's mixup generator (seeded seed + 1) on the adversarial batch
    # gives exactly what the model was fed: mixup of the perturbed inputs.
    replay = torch.Generator().manual_seed(trainer.seed + 1)
    expected, _ = mixup_batch(adv, torch.zeros(len(adv), dtype=torch.long), 1.0, 10, generator=replay)
    assert torch.allclose(fed, expected, atol=1e-6)
